"""Issue 19: the presets train the authors' update.

One test per fix (hand-derived or reference values), and per model family one step of hpe_bench's
``HeadPoseModule`` through a Lightning Trainer (float64, from fixed weights, a fixed mixed batch and a seeded
Adam state) against the update written independently from the authors' rules (``tests/authors_update.py``):
OpNet (``experiment=opnet_blfs``: clipping, per-tag criteria) and TRG (``experiment=trg``: the authors'
parametrisation of the regressors, the raw heatmap landmarks on 2D-only samples).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from authors_update import (CONF, D, adam_by_hand, adam_state, build_module, clip_inf_by_hand, forward_and_grads,
                            lightning_step, mixed_batch, opnet_authors_loss, trg_authors_entries, trg_authors_loss,
                            trg_expected_grads)
from hpe_bench import geometry as G
from hpe_bench.codecs import opnet as codec
from hpe_bench.losses.trg_code import TRGCodeLoss
from reference_cases import load_trg_case, read_cases

OPNET_KINDS = ["full"] * 5 + ["2d"] * 2 + ["pose"]
TRG_KINDS = ["full", "2d_R", "full", "2d", "full", "full"]
OPNET_PRESETS = ["opnet", "opnet_300wlp", "opnet_blfs", "opnet_cross", "opnet_no_intensity", "opnet_no_landmarks",
                 "opnet_no_nll", "opnet_no_rotation", "opnet_resnet18", "opnet_resnet18_no_landmarks", "opnet_rot5"]


def _assert_updates(update: dict, expected: dict, lr: float, rtol: float = 1e-9) -> None:
    """Every parameter's update equals the expected one (parameters without gradient do not move)."""
    assert set(expected) <= set(update)
    for name, delta in update.items():
        want = expected.get(name, torch.zeros_like(delta))
        err = float((delta - want).abs().max())
        assert err <= rtol * float(want.abs().max()) + 1e-12 * lr, (name, err, float(want.abs().max()))


# -- fix 1: clipping ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override", [f"experiment={p}" for p in OPNET_PRESETS]
                         + ["model=opnet_code", "model=opnet_resnet18_code", "model=opnet"])
def test_opnet_presets_clip_as_the_authors(override):
    """The authors' update function calls clip_grad_norm_(params, 0.1, norm_type=inf) (shared/reference/opnet.md)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[override])
    assert cfg.model.grad_clip_max_norm == 0.1
    assert float(cfg.model.grad_clip_norm_type) == math.inf


# -- fix 2: which samples the box terms see -------------------------------------------------------------------
def test_codec_masks_are_the_authors_tags(shared_reference):
    """encode's has_* masks per kind of sample are the flags of the authors' tag (opnet_loss_cases.md, "Tags":
    POSE_WITH_LANDMARKS all, ONLY_POSE quat + coord, ONLY_LANDMARKS_25D landmarks only), read from the fixture's
    per-sample flags of each tag."""
    z = read_cases(shared_reference, "opnet_loss_cases")
    flags = ("quat", "coord", "roi", "shape_params", "landmarks_crop", "landmarks_crop_z")
    tag_flags = {}
    for case in "ABC":
        for i, tag in enumerate(z[f"{case}/batch/tag"]):
            tag_flags[str(tag)] = tuple(bool(z[f"{case}/batch/has_{f}"][i]) for f in flags)
    module, _ = build_module("model=opnet", "model.crop.size=64")
    batch = mixed_batch(OPNET_KINDS)
    targets = codec.encode(batch, module.crop(batch))
    tag = {"full": "POSE_WITH_LANDMARKS", "pose": "ONLY_POSE", "2d": "ONLY_LANDMARKS_25D"}
    for i, kind in enumerate(OPNET_KINDS):
        got = tuple(bool(targets[f"has_{f}"][i]) for f in flags)
        assert got == tag_flags[tag[kind]], (kind, dict(zip(flags, got)))


def test_box_terms_average_the_tagged_samples_over_the_whole_batch():
    """roi = 0.01 x sum over the pose+landmark samples of mean_j (roi^_j - roi_j)^2 / B, nll_roi likewise:
    a 2D-only or pose-only sample adds 0 to the sum and 1 to B."""
    module, _ = build_module("model=opnet", "model.crop.size=64")
    batch = mixed_batch(OPNET_KINDS)
    inputs = module.crop(batch)
    targets = codec.encode(batch, inputs)
    gen = torch.Generator().manual_seed(0)
    roi = targets["roi"].to(D) + 0.05 * torch.randn(len(OPNET_KINDS), 4, generator=gen, dtype=D)
    sigma = torch.tensor([0.03, 0.05, 0.04, 0.08], dtype=D)
    full = torch.tensor([k == "full" for k in OPNET_KINDS])
    sq = (roi - targets["roi"].to(D)).square()
    want = 0.01 * sq.mean(-1)[full].sum() / len(OPNET_KINDS)
    nll = (0.5 * sq / sigma ** 2 + sigma.log() + 0.5 * math.log(2 * math.pi)).mean(-1)
    want_nll = 1e-4 * nll[full].sum() / len(OPNET_KINDS)
    raw = module.loss_fn.unweighted_terms({**_dummy_opnet_pred(targets), "roi": roi, "roi_scale": sigma}, targets)
    assert (0.01 * raw["roi"]).item() == pytest.approx(want.item(), rel=1e-12)
    assert (1e-4 * raw["nll_roi"]).item() == pytest.approx(want_nll.item(), rel=1e-12)


def _dummy_opnet_pred(targets: dict) -> dict:
    """Predictions equal to the targets (every term but roi's is then irrelevant to the check)."""
    B = targets["quat"].shape[0]
    eye = torch.eye(3, dtype=D).expand(B, 3, 3)
    return {"quat": targets["quat"].to(D), "quat_raw": targets["quat"].to(D), "coord": targets["coord"].to(D),
            "rot_scale_tril": eye, "coord_scale_tril": eye}


# -- fix 3: TRG's regressors keep the authors' entries ----------------------------------------------------------
def test_import_maps_every_regressor_entry_unscaled(shared_reference):
    """The importer only permutes the authors' regressor tensors: with the import test (same outputs as the
    authors' network), every weight is the authors' entry, so Adam's per-entry step is theirs."""
    from test_import_checkpoint import authors_state_dict, reference
    from hpe_bench.importers import importer

    manifest, _ = reference("trg")
    authors = authors_state_dict(manifest)
    state, _ = importer("trg").convert(authors, "fixture")
    sixd = list(G.SIXD_FROM_ROW_MAJOR)
    for i in range(3):
        fc1, ours = authors[f"regressor.{i}.fc1.weight"], state[f"regressors.{i}.trunk.0.weight"]
        # the last 12 columns: 6D (permuted), c = (s, dx, dy), I_bbox = (tau_x/f, tau_y/f, b/f)
        n = fc1.shape[1]
        assert torch.equal(ours[:, n - 6:], fc1[:, n - 6:])
        assert torch.equal(ours[:, n - 12:n - 6], fc1[:, n - 12:n - 6][:, sixd])
        rows = sixd + [6, 7, 8]
        assert torch.equal(state[f"regressors.{i}.pose_head.weight"], authors[f"regressor.{i}.decpose.weight"][rows])
        assert torch.equal(state[f"regressors.{i}.pose_head.bias"], authors[f"regressor.{i}.decpose.bias"][rows])


def _light_trg(**kw):
    from hpe_bench.models.trg import TRG
    torch.manual_seed(0)
    return TRG(backbone="resnet10t", hidden=64, channels=32, grid_size=6, **kw).eval()


@pytest.mark.parametrize("variant", [{}, {"translation": "camera_offset"}, {"bbox_info": "no_size"}])
def test_state_dict_written_before_issue19_loads_as_the_same_function(variant):
    """A state dict of the old parametrisation (checkpoint README: dx, dy rows of the pose head x 0.5, fc1's c
    dx, dy columns x 2, I_bbox tau columns x 4; no 'parametrisation' key) loads into the same function."""
    from hpe_bench.models.crop import CropInput

    net = _light_trg(**variant)
    new = net.state_dict()
    old = {k: v.clone() for k, v in new.items() if k != "parametrisation"}
    k_info = {"full": 3, "no_size": 2}.get(variant.get("bbox_info", "full"))
    for i in range(len(net.regressors)):
        w = old[f"regressors.{i}.trunk.0.weight"]
        n = w.shape[1] - k_info  # first I_bbox column
        w[:, n:n + 2] *= 4.0
        if variant.get("translation", "correction") == "correction":
            w[:, n - 2:n] *= 2.0
            old[f"regressors.{i}.pose_head.weight"][7:9] *= 0.5
            old[f"regressors.{i}.pose_head.bias"][7:9] *= 0.5
    batch = mixed_batch(["full", "full"], image_size=96)
    inputs = CropInput(size=64)({k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                                 for k, v in batch.items()})
    with torch.no_grad():
        want = net(inputs)
        fresh = _light_trg(**variant)
        fresh.load_state_dict(old, strict=True)
        got = fresh(inputs)
    assert int(fresh.parametrisation) == fresh.PARAMETRISATION
    for key in ("t", "R", "vertices"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    for k, v in new.items():
        torch.testing.assert_close(fresh.state_dict()[k].to(v.dtype), v, rtol=1e-6, atol=0)


# -- fix 4: the 68 landmarks of 2D-only samples -----------------------------------------------------------------
def test_lmk68_is_zero_for_the_authors_labels_on_every_pipeline(shared_reference):
    """A raw soft-argmax output equal to the authors' label (``ref_in/lmk68_crop``: 300W-LP's from OpenCV's
    (S - 1)/b warp, ARKitFace's from S/b) gives 0 on both pipelines (case C: 300W-LP, ARKitFace, 300W-LP)."""
    z = read_cases(shared_reference, "trg_loss_cases")
    pred, batch, inputs, _ = load_trg_case(z, "C")
    S = 192.0
    label = torch.as_tensor(z["C/ref_in/lmk68_crop"])[..., :2]
    # the raw output q = x_c / S x 2 - 1 at crop px x_c; hpe_bench's heatmap_landmarks u = 2 x_c / (S - 1) - 1
    pred["heatmap_landmarks"] = (label + 1) * S / 2 * 2 / (S - 1) - 1
    only = TRGCodeLoss(head=0, cam=0, img=0, rot=0, ed=0, landmarks5=0).double()
    # (up to the float32 rounding of the fixture's stored labels: 2e-8 of a term of order 1e-2 here)
    assert only(pred, batch, inputs)["landmarks"].item() == pytest.approx(0.0, abs=1e-7)
    # a prediction on the project's label (2 x_c / (S - 1) - 1 with x_c = (x - x0) S / b) misses the 300W-LP
    # samples' labels by 2 (x - x0) / (b S) per coordinate: 1.25 x the mean of that x confidence over B 68 2
    A = inputs["A"]
    x_c = G.apply_transform_2d(A, batch["landmarks_2d"])
    pred["heatmap_landmarks"] = x_c * 2 / (S - 1) - 1
    conf = torch.as_tensor(z["C/ref_in/lmk68_crop"])[..., 2]
    two_d = ~batch["has_vertices"]
    miss = (2 * x_c / S / S).sum(-1) * conf * two_d[:, None]
    want = 1.25 * miss.sum() / (3 * 68 * 2)
    assert want.item() > 1e-3 and only(pred, batch, inputs)["landmarks"].item() == pytest.approx(want.item(), abs=1e-7)


# -- fix 5: full-image decode on non-square code windows --------------------------------------------------------
def test_opnet_decode_on_a_161_by_160_window():
    """The code's window for this box is 161 x 160 px (pixel-edge x 20..181, y 20..180); its back-transform maps
    x_norm with w / 2, y_norm with h / 2 and the size with sqrt((w^2 + h^2) / 2) / 2 (Affine2d.scales)."""
    box = torch.tensor([[19.5, 19.2, 180.1, 179.8]], dtype=D)  # pixel-centre; edges 20.0, 19.7, 180.6, 180.3
    window, A, _ = G.crop_window_maps(box, 1.0, 129, "pixel_edge")
    np.testing.assert_array_equal((window + 0.5).numpy(), [[20.0, 20.0, 181.0, 180.0]])
    coord = torch.tensor([[0.3, -0.6, 0.55]], dtype=D)
    lm = torch.tensor([[[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.25, 0.75, 0.1]]], dtype=D)
    inputs = {"A": A, "K": G.fallback_intrinsics(320, 240, D)[None], "has_K": torch.zeros(1, dtype=torch.bool),
              "image": torch.zeros(1, 1, 129, 129)}
    out = codec.decode({"R_crop": torch.eye(3, dtype=D)[None], "coord": coord, "landmarks_crop": lm}, inputs)
    w, h = 161.0, 160.0
    to_px = lambda x, y: (20.0 + (x + 1) * w / 2 - 0.5, 20.0 + (y + 1) * h / 2 - 0.5)  # noqa: E731 (pixel centres)
    np.testing.assert_allclose(out["coord_px"][0, :2].numpy(), to_px(0.3, -0.6), atol=1e-9)
    assert out["coord_px"][0, 2].item() == pytest.approx(0.55 * math.sqrt((w * w + h * h) / 2) / 2, rel=1e-12)
    np.testing.assert_allclose(out["landmarks_2d"][0].numpy(), [to_px(-1, -1), to_px(1, 1), to_px(0.25, 0.75)],
                               atol=1e-9)
    torch.testing.assert_close(out["R"], torch.eye(3, dtype=D)[None])  # axis-aligned scaling: no rotation


def test_affine_scale_and_rotation_by_hand():
    """geometry's rules for the crop map: on a similarity s R(30 deg) (and its mirror) the scale s and the
    rotation R (det -1 with the mirror); on diag(kx, ky) the RMS sqrt((kx^2 + ky^2) / 2) and no rotation."""
    c, s_ = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = torch.tensor([[2 * c, -2 * s_, 5.0], [2 * s_, 2 * c, -1.0], [0, 0, 1]], dtype=D)
    mirror = rot @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=D))
    diag = torch.tensor([[0.8, 0, 3.0], [0, 0.805, 4.0], [0, 0, 1]], dtype=D)
    A = torch.stack([rot, mirror, diag])
    torch.testing.assert_close(G.affine_size_scale(A), torch.tensor([2.0, 2.0, math.sqrt((0.8 ** 2 + 0.805 ** 2) / 2)],
                                                                     dtype=D))
    Q = G.affine_rotation(A)
    torch.testing.assert_close(Q[0, :2, :2], torch.tensor([[c, -s_], [s_, c]], dtype=D))
    torch.testing.assert_close(Q[1, :2, :2], torch.tensor([[-c, -s_], [-s_, c]], dtype=D))
    torch.testing.assert_close(Q[2], torch.eye(3, dtype=D))
    torch.testing.assert_close(Q[:2], G.similarity_rotation(A[:2]))


# -- one step, per model family -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def opnet_step():
    module, cfg = build_module("experiment=opnet_blfs", "model.crop.size=64")
    batch = mixed_batch(OPNET_KINDS)
    grads, loss, _ = forward_and_grads(module, batch,
                                       lambda pred, inputs: opnet_authors_loss(pred, batch, inputs, OPNET_KINDS))
    clipped = clip_inf_by_hand(grads, 0.1)
    state = adam_state(clipped)
    lr = float(cfg.model.optimizer.lr)
    update, hpe_loss = lightning_step(module, batch, state)
    return dict(grads=grads, loss=loss, expected=adam_by_hand(clipped, state, lr), update=update, hpe_loss=hpe_loss,
                lr=lr)


def test_opnet_one_step_is_the_authors_update(opnet_step):
    """experiment=opnet_blfs (5 pose+landmark, 2 2D-landmark, 1 pose-only samples): the loss is the authors',
    the gradients are clipped at inf-norm 0.1 (here by a factor < 1) and Adam steps every parameter as theirs."""
    s = opnet_step
    assert s["hpe_loss"] == pytest.approx(float(s["loss"]["total"]), rel=1e-12)
    assert max(float(g.abs().max()) for g in s["grads"].values() if g is not None) > 0.1  # clipping is active
    _assert_updates(s["update"], s["expected"], s["lr"])


@pytest.fixture(scope="module")
def trg_step():
    module, cfg = build_module("experiment=trg", "model.crop.size=64", "model.net.pretrained=false",
                               "model.net.hidden=256")
    batch = mixed_batch(TRG_KINDS, shape_params=False)
    side = batch["box"][3, 2] - batch["box"][3, 0]
    batch["box"][3] += torch.tensor([0.45, 0.3, 0.45, 0.3], dtype=D) * side  # landmarks outside the crop
    grads, loss, entries = forward_and_grads(module, batch, lambda pred, inputs: trg_authors_loss(pred, batch, inputs),
                                             extra=trg_authors_entries)
    expected_grads = trg_expected_grads(grads, entries)
    state = adam_state(expected_grads)
    lr = float(cfg.model.optimizer.lr)
    update, hpe_loss = lightning_step(module, batch, state)
    return dict(grads=grads, entries=entries, loss=loss, expected=adam_by_hand(expected_grads, state, lr),
                update=update, hpe_loss=hpe_loss, lr=lr, batch=batch, module=module)


def test_trg_chain_rule_hooks_agree_with_autograd_where_nothing_is_rescaled(trg_step):
    """Check of the test's own machinery: the s and b / f columns and the s row, unscaled in both
    parametrisations, get autograd's gradient from the chain rule."""
    g, e = trg_step["grads"], trg_step["entries"]
    for i in range(3):
        w = f"net.regressors.{i}.trunk.0.weight"
        torch.testing.assert_close(e[w][:, [0, 5]], g[w][:, [-6, -1]], rtol=1e-10, atol=1e-14)
        p = f"net.regressors.{i}.pose_head.weight"
        torch.testing.assert_close(e[p][0], g[p][6], rtol=1e-10, atol=1e-14)


def test_trg_one_step_is_the_authors_update(trg_step):
    """experiment=trg (4 ARKitFace-like samples, 2 300W-LP-like, one with landmarks outside the crop): the loss is
    the authors' (raw heatmap landmarks) and Adam steps every parameter as theirs, the regressors' dx, dy and
    I_bbox entries included (their gradients formed in the authors' units)."""
    s = trg_step
    assert s["hpe_loss"] == pytest.approx(float(s["loss"]["total"]), rel=1e-12)
    _assert_updates(s["update"], s["expected"], s["lr"])
