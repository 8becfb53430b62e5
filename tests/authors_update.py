"""The authors' training update, written from their rules, for the one-step tests (test_authors_update.py) and
the measurements of docs/reproducing.md ("The authors' update"). Not a test module.

Everything that defines the expected update is written here from ``shared/reference`` (opnet.md, trg.md,
checkpoints/README.md, losses/*_cases.md with the TRG erratum), never from hpe_bench's losses, codec masks or
parametrisation:

- mixed batches of synthetic labels (seeded), each sample of one of the authors' tags (OpNet) / pipelines (TRG);
- the authors' losses, per sample and tag (OpNet ``default_update_fun``: sum over the samples having a
  criterion of weight x value, / B) and per written reduction (TRG ``train.py``);
- the authors' parametrisation of TRG's regressor inputs and pose outputs (their dx = 2 x the paper's, I_bbox
  centre x 4), through which their gradients of those weights are formed by the chain rule;
- ``clip_grad_norm_(max_norm=0.1, norm_type=inf)`` (OpNet) and ``torch.optim.Adam``'s step (both authors'
  optimiser, default betas and eps) by hand.

hpe_bench's side is one real optimizer step: ``HeadPoseModule.training_step`` + Lightning's clipping hook + Adam,
run by a Lightning ``Trainer`` in float64 from a given Adam state (``lightning_step``).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hpe_bench.assets import ARKIT_TOPOLOGY, arkit_face
from hpe_bench.codecs import opnet as codec
from hpe_bench.data.synthetic.scene import sample_scenes
from hpe_bench.schema import collate

import hpe_bench  # noqa: E402  (the package under test: its own conf/, so an older tree can be measured too)

CONF = Path(hpe_bench.__file__).resolve().parents[1] / "conf"
D = torch.float64
SEED = 1234  # dropout masks: the same on both sides (seeded right before each forward)
ADAM = dict(betas=(0.9, 0.999), eps=1e-8)  # torch.optim.Adam's defaults: both authors' optimisers
ADAM_STEP = 10  # the state's step count before the compared step (bias corrections not trivial)

# -- batches ---------------------------------------------------------------------------------------------------
# Which labels each kind of sample carries (hpe_bench schema fields).
KINDS = {
    "full": ("K", "R", "t", "landmarks_2d", "landmarks_3d", "vertices"),  # OpNet POSE_WITH_LANDMARKS; TRG ARKitFace
    "pose": ("K", "R", "t"),                                               # OpNet ONLY_POSE (BIWI)
    "2d": ("landmarks_2d",),                                               # OpNet ONLY_LANDMARKS_25D (Face Synthetics)
    "2d_R": ("landmarks_2d", "R"),                                         # TRG 300W-LP (hpe_bench's carries an R)
}


def mixed_batch(kinds: list[str], seed: int = 7, image_size: int = 128, shape_params: bool = True) -> dict:
    """Schema batch of synthetic scenes (labels of ``sample_scenes``; random images: the rule, not the pixels, is
    under test), sample i keeping the labels of ``kinds[i]`` (``KINDS``); "full" samples get 50 random shape
    parameters when ``shape_params`` (the OpNet datasets of that tag have them). Floats in float64."""
    _, labels = sample_scenes(seed, "train", 0, len(kinds), image_size)
    rng = np.random.default_rng(seed)
    samples = []
    for i, kind in enumerate(kinds):
        s = {"image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8), "box": labels["box"][i],
             "dataset": kind, "sample_id": f"{i:02d}", "topology": ARKIT_TOPOLOGY}
        s.update({k: labels[k][i] for k in KINDS[kind]})
        if kind == "full" and shape_params:
            s["shape_params"] = rng.normal(0.0, 0.4, 50).astype(np.float32)
        samples.append(s)
    batch = collate(samples)
    return {k: v.to(D) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def build_module(*overrides: str):
    """``HeadPoseModule`` of a composed config (no augmentation, no LR schedule, no recipe callbacks: the update
    rule of one step at the optimizer's lr is under test), in float64."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["++model.scheduler=null", "++model.callbacks=null",
                                           "++model.total_samples=null", *overrides])
    torch.manual_seed(0)  # the initial weights
    module = instantiate(cfg.model, loss=instantiate(cfg.loss), augment=None)
    return module.double(), cfg


# -- OpNet: the authors' loss (losses/opnet_loss_cases.md, "Criteria per tag", "Reductions") ----------------------
# Nominal weights: the authors multiply them into float32 tensors (0.003 -> 0.0030000000260770321, up to 4.7e-8
# relative, opnet_loss_cases.md); hpe_bench keeps the nominal values, a rounding left out of the comparison.
OPNET_WEIGHTS = {"rot": 0.5, "xy": 0.25, "sz": 0.25, "quatregularization1": 1e-6, "nllrot": 0.003, "nllcoord": 0.003,
                 "points3d": 0.7, "nllpoints3d": 0.007, "shp_l2": 0.05, "nllshape": 0.0005, "box": 0.01,
                 "nllbox": 0.0001}
_POSE = ("nllrot", "nllcoord", "rot", "xy", "sz", "quatregularization1")
OPNET_TAG_CRITERIA = {"POSE_WITH_LANDMARKS": _POSE + ("nllpoints3d", "points3d", "nllshape", "shp_l2", "nllbox", "box"),
                      "ONLY_POSE": _POSE, "ONLY_LANDMARKS_25D": ("nllpoints3d", "points3d", "quatregularization1")}
OPNET_TAG = {"full": "POSE_WITH_LANDMARKS", "pose": "ONLY_POSE", "2d": "ONLY_LANDMARKS_25D"}


def opnet_landmark_weights() -> torch.Tensor:
    """0 at the eyelid points 37, 38, 40, 41, 43, 44, 46, 47; 0.8 at the chin contour 0-7 and 9-16 (the authors'
    float32 0.8 = 0.800000011920929); else 1."""
    w = torch.ones(68, dtype=D)
    w[[37, 38, 40, 41, 43, 44, 46, 47]] = 0.0
    w[list(range(8)) + list(range(9, 17))] = float(np.float32(0.8))
    return w


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of xyzw quaternions."""
    av, aw, bv, bw = a[..., :3], a[..., 3:], b[..., :3], b[..., 3:]
    return torch.cat([aw * bv + bw * av + torch.cross(av, bv, dim=-1), aw * bw - (av * bv).sum(-1, keepdim=True)], -1)


def _gauss_nll(v: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """-log N(v; 0, L L^T) for v (B, 3), L (B, 3, 3) lower triangular."""
    y = torch.linalg.solve_triangular(L, v.unsqueeze(-1), upper=False).squeeze(-1)
    return 0.5 * y.square().sum(-1) + torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1) + 1.5 * math.log(2 * math.pi)


def opnet_criteria(pred: Mapping, targets: Mapping, tag: str) -> dict[str, torch.Tensor]:
    """Every criterion's per-sample value (B,) as if every sample had ``tag`` (points: its components)."""
    q_hat, q = pred["quat"], targets["quat"].to(D)
    r = _quat_mul(q_hat * torch.tensor([-1.0, -1, -1, 1], dtype=D), q)
    r = torch.where(r[:, 3:] < 0, -r, r)  # real part non-negative: angle in [0, pi]
    axis_norm = r[:, :3].norm(dim=-1, keepdim=True)
    rotvec = r[:, :3] * (2 * torch.atan2(axis_norm, r[:, 3:])) / (axis_norm + 1e-12)
    c_hat, c = pred["coord"], targets["coord"].to(D)
    use = [0, 1, 2] if tag == "POSE_WITH_LANDMARKS" else [0, 1]
    w = opnet_landmark_weights()
    p_hat, p = pred["landmarks_crop"][..., use], targets["landmarks_crop"].to(D)[..., use]
    b = pred["points_scale"].to(D)[None, :, None]
    delta = (p_hat - p).abs()

    def diag_nll(x_hat, x, sigma):
        return (0.5 * ((x - x_hat) / sigma).square() + sigma.log() + 0.5 * math.log(2 * math.pi)).mean(-1)

    return {
        "rot": 1.0 - (q_hat * q).sum(-1).square(),
        "xy": (c_hat[:, :2] - c[:, :2]).square().mean(-1), "sz": (c_hat[:, 2] - c[:, 2]).square(),
        "quatregularization1": (1.0 - pred["quat_raw"].norm(dim=-1)).square(),
        "nllrot": _gauss_nll(rotvec, pred["rot_scale_tril"]),
        "nllcoord": _gauss_nll(c - c_hat, pred["coord_scale_tril"]),
        "points3d": (w[None, :, None] * delta).sum((-2, -1)) / 68.0,
        "nllpoints3d": (w[None, :, None] * (torch.log(2 * b) + delta / b)).sum((-2, -1)) / (68.0 * len(use)),
        "shp_l2": (pred["shape_params"] - targets["shape_params"].to(D)).square().mean(-1),
        "nllshape": diag_nll(pred["shape_params"], targets["shape_params"].to(D), pred["shape_scale"]),
        "box": (pred["roi"] - targets["roi"].to(D)).square().mean(-1),
        "nllbox": diag_nll(pred["roi"], targets["roi"].to(D), pred["roi_scale"]),
    }


def opnet_authors_loss(pred: Mapping, batch: Mapping, inputs: Mapping, kinds: list[str]) -> dict[str, torch.Tensor]:
    """The authors' loss: sum over criteria c and the samples whose tag has c of weight_c x value, / B; also each
    criterion's contribution. The target values come from ``codecs.opnet.encode`` (the label geometry, tested on
    its own); which sample sees which criterion comes from its tag (``kinds``), not from the codec's masks."""
    targets = codec.encode(batch, inputs)
    B = len(kinds)
    out = {}
    for tag in set(OPNET_TAG[k] for k in kinds):
        rows = torch.tensor([OPNET_TAG[k] == tag for k in kinds])
        values = opnet_criteria(pred, targets, tag)
        for c in OPNET_TAG_CRITERIA[tag]:
            out[c] = out.get(c, 0.0) + OPNET_WEIGHTS[c] * values[c][rows].sum() / B
    out["total"] = sum(out.values())
    return out


# -- TRG: the authors' loss (losses/trg_loss_cases.md, "Reductions", "Erratum") ----------------------------------
TRG_LAMBDA = {"world": 20.0, "cam": 2.0, "img": 0.01, "rot": 10.0, "edge": 2.0, "lmk68": 1.25, "lmk5": 0.1}
KPT5_VERTEX = (1193, 1168, 4, 190, 639)  # keypoints_68[[39, 42, 33, 48, 54]] on the ARKit mesh (trg_loss_cases.md)


def _project(C: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    p = C @ K.transpose(-1, -2)
    return p[..., :2] / p[..., 2:]


def trg_authors_loss(pred: Mapping, batch: Mapping, inputs: Mapping) -> dict[str, torch.Tensor]:
    """The authors' TRG loss for hpe_bench's predictions. 3D-labelled samples (``has_vertices``: the ARKitFace
    pipeline) and 2D-only samples (the 300W-LP pipeline: labels by OpenCV's (S - 1)/b warp, confidence 1 inside
    the crop). The crop (x_c = (x - x0) S / b, ``inputs["A"]``) and S are the network's crop; K for img is the
    label's, for the 5 landmarks the one the network used (``inputs["K"]``; the authors': f = 5000 for 300W-LP)."""
    S = float(inputs["image"].shape[-1])
    # x_c = (x - x0) S / b, as the network's crop map A (B, 3, 3) holds it (A's float32 box geometry: computing
    # it again from the box in float64 would move the landmark terms by ~1e-8 relative)
    A = inputs["A"].to(D)

    def to_crop(p):
        return p @ A[:, :2, :2].transpose(-1, -2) + A[:, None, :2, 2]

    l3d = batch["has_vertices"].bool()
    B, nL = l3d.shape[0], int(l3d.sum())
    V_gt, R_gt, t_gt, K_gt = batch["vertices"].to(D), batch["R"].to(D), batch["t"].to(D), batch["K"].to(D)
    C_gt = V_gt @ R_gt.transpose(-1, -2) + t_gt[:, None]
    # labels of the 68 landmarks in the authors' normalised crop coordinates, per pipeline, and their confidence
    lm = batch["landmarks_2d"].to(D)
    scale = torch.where(l3d, 1.0, (S - 1.0) / S)[:, None, None]  # OpenCV's (S - 1) / b warp for 2D-only samples
    xc = to_crop(lm) * scale  # crop px
    label = xc / S * 2 - 1
    conf = torch.where(l3d[:, None], torch.ones_like(xc[..., 0]),
                       ((xc >= 0) & (xc < S)).all(-1).to(D)) * batch["has_landmarks_2d"].to(D)[:, None]
    kpt5 = list(KPT5_VERTEX)
    five = [39, 42, 33, 48, 54]
    terms = {k: torch.zeros((), dtype=D) for k in TRG_LAMBDA}
    n = len(pred["vertices_iters"])
    for i, (V, R, t) in enumerate(zip(pred["vertices_iters"], pred["R_iters"], pred["t_iters"])):
        w = 0.5 ** (n - 1 - i)
        C = V @ R.transpose(-1, -2) + t[:, None]
        terms["world"] = terms["world"] + w * (V - V_gt)[l3d].abs().sum() / (nL * V.shape[1] * 3)
        terms["cam"] = terms["cam"] + w * (C - C_gt)[l3d].abs().sum() / (nL * V.shape[1] * 3)
        img = (_project(C[l3d], K_gt[l3d]) - _project(C_gt[l3d], K_gt[l3d])).abs().sum() / (B * V.shape[1] * 2)
        terms["img"] = terms["img"] + w * img
        terms["rot"] = terms["rot"] + w * (R - R_gt)[l3d].square().sum() / (9 * nL)
        q = to_crop(_project(C[:, kpt5], inputs["K"].to(D))) / S * 2 - 1
        err5 = ((q - label[:, five]).abs().sum(-1) * conf[:, five]).sum() / (B * 5 * 2)
        terms["lmk5"] = terms["lmk5"] + w * err5
    tri = torch.as_tensor(np.asarray(arkit_face()["triangles"], dtype=np.int64))
    V3 = pred["vertices_iters"][-1]
    for j in range(3):
        a, c = tri[:, j], tri[:, (j + 1) % 3]
        d = ((V3[:, a] - V3[:, c]).norm(dim=-1) - (V_gt[:, a] - V_gt[:, c]).norm(dim=-1)).abs()
        terms["edge"] = terms["edge"] + d[l3d].sum() / (nL * tri.shape[0])
    # the raw soft-argmax output: crop px / S x 2 - 1 (hpe_bench's heatmap_landmarks u = 2 x_c / (S - 1) - 1)
    raw = (pred["heatmap_landmarks"] + 1) * (S - 1) / 2 / S * 2 - 1
    terms["lmk68"] = ((raw - label).abs().sum(-1) * conf).sum() / (B * 68 * 2)
    out = {k: TRG_LAMBDA[k] * v for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out


# -- gradients, clipping, Adam --------------------------------------------------------------------------------
def forward_and_grads(module, batch: Mapping, loss_fn: Callable, extra: Callable | None = None):
    """One forward of (a copy of) ``module``'s crop + net with the dropout seed, ``loss_fn(pred, inputs)``, its
    gradients per parameter name (``None`` where unused). ``extra(net) -> (setup, finish)`` may hook the net."""
    module = copy.deepcopy(module).train()
    inputs = module.crop(batch)
    hooks = extra(module.net) if extra is not None else None
    torch.manual_seed(SEED)
    pred = module.net(inputs)
    loss = loss_fn(pred, inputs)
    loss["total"].backward()
    grads = {f"net.{n}": (None if p.grad is None else p.grad.detach().clone())
             for n, p in module.net.named_parameters()}
    info = hooks(pred, inputs) if hooks is not None else None
    return grads, {k: v.detach() for k, v in loss.items()}, info


def clip_inf_by_hand(grads: Mapping, max_norm: float = 0.1) -> dict:
    """torch's clip_grad_norm_(max_norm, inf): every gradient x min(1, max_norm / (max |g| + 1e-6))."""
    top = max(float(g.abs().max()) for g in grads.values() if g is not None)
    coef = min(1.0, max_norm / (top + 1e-6))
    return {k: (None if g is None else g * coef) for k, g in grads.items()}


def adam_state(grads: Mapping, seed: int = 5) -> dict:
    """A seeded Adam state per parameter, sized like the gradients so the step depends on the gradient's scale:
    exp_avg = g x U(-1, 1), exp_avg_sq = (|g| x U(0.5, 2))^2 + (1e-3 s)^2, step ``ADAM_STEP``, with s the median
    over the tensors of max |g|. The floor keeps a gradient that is 0 up to rounding (TRG's heatmap bias: the
    soft-argmax ignores a constant per heatmap, |g| ~ 1e-19) from being normalised into an O(lr) step of noise."""
    gen = torch.Generator().manual_seed(seed)
    tops = [float(g.abs().max()) for g in grads.values() if g is not None and float(g.abs().max()) > 0]
    floor = (1e-3 * float(np.median(tops))) ** 2
    state = {}
    for name in sorted(grads):
        g = grads[name]
        if g is None:
            continue
        u1 = torch.rand(g.shape, generator=gen, dtype=D) * 2 - 1
        u2 = 0.5 + 1.5 * torch.rand(g.shape, generator=gen, dtype=D)
        state[name] = {"step": float(ADAM_STEP), "exp_avg": g * u1, "exp_avg_sq": (g.abs() * u2).square() + floor}
    return state


def adam_by_hand(grads: Mapping, state: Mapping, lr: float) -> dict:
    """torch.optim.Adam's update (no weight decay, no amsgrad) of each parameter: m = b1 m + (1 - b1) g,
    v = b2 v + (1 - b2) g^2, t = step + 1, delta = -lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""
    (b1, b2), eps = ADAM["betas"], ADAM["eps"]
    out = {}
    for name, g in grads.items():
        if g is None:
            continue
        s = state[name]
        m = b1 * s["exp_avg"] + (1 - b1) * g
        v = b2 * s["exp_avg_sq"] + (1 - b2) * g * g
        t = s["step"] + 1
        out[name] = -lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return out


class _OneStep(L.Callback):
    def __init__(self, state: Mapping):
        self.state, self.loss = state, None

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        names = {p: n for n, p in pl_module.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                s = self.state.get(names[p])
                if s is not None:
                    opt.state[p] = {"step": torch.tensor(s["step"]), "exp_avg": s["exp_avg"].clone(),
                                    "exp_avg_sq": s["exp_avg_sq"].clone()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(SEED)  # the same dropout masks as forward_and_grads

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = float(outputs["loss"])


def lightning_step(module, batch: Mapping, state: Mapping) -> tuple[dict, float]:
    """One optimizer step of ``module`` (float64) on ``batch`` from the Adam ``state`` through a Lightning Trainer:
    ``training_step``, backward, ``configure_gradient_clipping``, Adam. Returns (update per parameter, loss)."""
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    hook = _OneStep(state)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, precision="64-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[hook])
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda x: x)
    trainer.fit(module, train_dataloaders=loader)
    return {n: p.detach() - before[n] for n, p in module.named_parameters()}, hook.loss


# -- TRG: the authors' gradients of the reparametrised entries (chain rule in their units) -----------------------
def trg_authors_entries(net):
    """Hooks for ``forward_and_grads``: the gradients the authors' parametrisation gives the regressors' fc1
    columns of c's dx, dy and I_bbox's tau_x / f, tau_y / f, and the pose head's dx, dy rows.

    The authors' fc1 reads x_a = (..., s, 2 dx, 2 dy, 4 tau_x / f, 4 tau_y / f, b / f) (dx, dy the previous
    iteration's offsets in the paper's units; c0 = (1, 0, 0)), so its weight gradient there is
    sum_b dL/dz_b x_a,b^T (z: fc1's output). Their pose head outputs r = the step of their dx_a = 2 dx, so
    dL/dr = dL/d(dx_a) = dL/d(dx) / 2 and the row gradient is sum_b dL/dr_b h_b^T (h: the head's input). The s
    and b / f columns and the s row, unscaled, are returned too (they must equal autograd's: a check of the
    hooks)."""
    captured = {"z": [], "h": []}
    handles = []
    for reg in net.regressors:
        def keep_z(mod, args, out):
            out.retain_grad()
            captured["z"].append(out)

        def keep_h(mod, args, out):
            captured["h"].append(args[0])
        handles += [reg.trunk[0].register_forward_hook(keep_z), reg.pose_head.register_forward_hook(keep_h)]

    def finish(pred, inputs):
        for h in handles:
            h.remove()
        # the paper's I_bbox = (tau_x / f, tau_y / f, b / f) as the crop computed it (float32 box geometry;
        # geometry.box_features is tested on its own): the authors' units are the point here
        info = inputs["bbox_info"].to(D)
        tau, side = info[:, :2], info[:, 2]
        B = info.shape[0]
        p_prev = [torch.tensor([1.0, 0.0, 0.0], dtype=D).expand(B, 3)] + [p.detach() for p in
                                                                           pred["translation_params_iters"][:-1]]
        out = {}
        for i, (z, h) in enumerate(zip(captured["z"], captured["h"])):
            x_a = torch.stack([p_prev[i][:, 0], 2 * p_prev[i][:, 1], 2 * p_prev[i][:, 2], 4 * tau[:, 0],
                               4 * tau[:, 1], side], -1)  # s, dx_a, dy_a, I_bbox_a
            out[f"net.regressors.{i}.trunk.0.weight"] = z.grad.transpose(0, 1) @ x_a  # (hidden, 6): cols -6..-1
            dp = pred["translation_params_iters"][i].grad  # dL/d(s, dx, dy), paper units
            dr = torch.stack([dp[:, 0], dp[:, 1] / 2, dp[:, 2] / 2], -1)  # d/d(the authors' outputs 6, 7, 8)
            out[f"net.regressors.{i}.pose_head.weight"] = dr.transpose(0, 1) @ h.detach()  # rows 6, 7, 8
            out[f"net.regressors.{i}.pose_head.bias"] = dr.sum(0)
        return out

    # translation_params_iters must keep their gradients: retain them as soon as the net returns
    orig_forward = net.forward

    def forward(inputs):
        pred = orig_forward(inputs)
        for p in pred["translation_params_iters"]:
            p.retain_grad()
        return pred
    net.forward = forward
    return finish


def trg_expected_grads(grads: Mapping, entries: Mapping) -> dict:
    """``grads`` (autograd) with the reparametrised entries replaced by the authors' (``trg_authors_entries``)."""
    out = dict(grads)
    for name, g in entries.items():
        g_all = out[name].clone()
        if name.endswith("trunk.0.weight"):
            g_all[:, -5:-1] = g[:, 1:5]  # dx, dy, tau_x, tau_y
        else:
            g_all[7:9] = g[1:3]  # pose head dx, dy rows
        out[name] = g_all
    return out
