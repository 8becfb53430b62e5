"""TRG loss: hand-computable values of every term, label masking, iteration weights, configs, schedule, a tiny run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hpe_bench import geometry as G
from hpe_bench.assets import ARKIT_TOPOLOGY, arkit_face
from hpe_bench.losses.trg import TERMS, TRGLoss, iteration_weights, unique_edges
from hpe_bench.schedules import paper_step_schedule

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
S = 64
F_PX, C_PX = 500.0, 100.0
MEAN = torch.as_tensor(arkit_face()["mean_vertices"], dtype=torch.float64)
ONLY = {k: 0.0 for k in TERMS}


def only(term, weight=1.0):
    return TRGLoss(**dict(ONLY, **{term: weight})).double()


def make_batch(B=2):
    """GT: the mean face, R = I, t = (0, 0, 0.5) m, f = 500 px, all labels present."""
    K = G.make_intrinsics(*(torch.full((B,), v, dtype=torch.float64) for v in (F_PX, F_PX, C_PX, C_PX)))
    R, t = torch.eye(3, dtype=torch.float64).expand(B, 3, 3).clone(), torch.tensor([[0.0, 0.0, 0.5]] * B,
                                                                                     dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    lm = 50 + 100 * torch.rand(B, 68, 2, generator=g, dtype=torch.float64)
    n = MEAN.shape[0]
    return {"R": R, "t": t, "K": K, "landmarks_2d": lm, "vertices": MEAN.expand(B, n, 3).clone(),
            "vertices_mask": torch.ones(B, n, dtype=torch.bool), "topology": [ARKIT_TOPOLOGY] * B,
            **{f"has_{k}": torch.ones(B, dtype=torch.bool) for k in ("R", "t", "K", "landmarks_2d", "vertices")}}


def make_inputs(batch):
    """The network inputs the loss reads (``CropInput``'s ``A`` and an S x S image): crop of box (10, 20, 110, 120)."""
    B = batch["R"].shape[0]
    box = torch.tensor([[10.0, 20.0, 110.0, 120.0]] * B, dtype=torch.float64)
    return {"image": torch.zeros(B, 3, S, S, dtype=torch.float64), "A": G.crop_transform(box, S)}


def make_pred(batch, iters=3):
    """A perfect prediction of ``batch`` (every iteration equal to the GT) for the crop of ``make_inputs``."""
    hm = G.crop_to_normalized(G.apply_transform_2d(make_inputs(batch)["A"], batch["landmarks_2d"]), S)
    return {"vertices_iters": [batch["vertices"].clone() for _ in range(iters)],
            "R_iters": [batch["R"].clone() for _ in range(iters)], "t_iters": [batch["t"].clone() for _ in range(iters)],
            "heatmap_landmarks": hm}


def test_perfect_prediction_is_zero_and_terms_are_returned():
    batch = make_batch()
    out = TRGLoss().double()(make_pred(batch), batch, make_inputs(batch))
    assert set(out) == set(TERMS) | {"loss"}
    for k, v in out.items():
        assert v.item() == pytest.approx(0.0, abs=1e-9), k


def test_iteration_weights():
    assert iteration_weights(3) == [0.25, 0.5, 1.0]
    assert iteration_weights(2) == [0.5, 1.0] and iteration_weights(1) == [1.0]


def test_translation_error_gives_l1_of_d_per_vertex():
    batch = make_batch()
    pred = make_pred(batch)
    d = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64)
    pred["t_iters"] = [t + d for t in pred["t_iters"]]
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    # per vertex |d|_1 = 0.06 m, summed over iterations with 1/4 + 1/2 + 1, lambda_cam = 2
    assert out["cam"].item() == pytest.approx(2 * 1.75 * 0.06)
    for k in ("head", "rot", "ed", "landmarks"):
        assert out[k].item() == pytest.approx(0.0, abs=1e-12), k


def test_only_first_iteration_wrong_weighs_one_quarter():
    batch = make_batch()
    pred = make_pred(batch)
    d = torch.tensor([0.0, 0.0, 0.04], dtype=torch.float64)
    pred["t_iters"][0] = pred["t_iters"][0] + d
    assert only("cam")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(0.25 * 0.04)
    pred = make_pred(batch, iters=2)
    pred["t_iters"][0] = pred["t_iters"][0] + d
    assert only("cam")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(0.5 * 0.04)


def test_img_term_pure_x_shift():
    batch = make_batch()
    pred = make_pred(batch)
    d = 0.01
    pred["t_iters"] = [t + torch.tensor([d, 0.0, 0.0], dtype=torch.float64) for t in pred["t_iters"]]
    z = MEAN[:, 2] + 0.5  # R = I: camera depth of each vertex
    expected = 1.75 * (F_PX * d / z).mean().item()  # u = f X / Z + c shifts by f d / Z, v unchanged
    assert only("img")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(expected, rel=1e-9)
    assert TRGLoss().double()(pred, batch, make_inputs(batch))["img"].item() == pytest.approx(0.01 * expected, rel=1e-9)


def test_head_term_and_edge_term_zero_for_rigid_motion():
    batch = make_batch()
    pred = make_pred(batch)
    d = torch.tensor([0.002, 0.001, -0.003], dtype=torch.float64)
    Rz = G.axis_rotation("z", torch.tensor(0.3, dtype=torch.float64))
    pred["vertices_iters"] = [v + d for v in pred["vertices_iters"][:-1]] + [pred["vertices_iters"][-1] @ Rz.T + d]
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    assert out["ed"].item() == pytest.approx(0.0, abs=1e-12)  # final face rigidly moved: edge lengths kept
    # iterations 1, 2: per-vertex |d|_1 = 0.006 m; lambda_head = 20
    head_12 = 20 * (0.25 + 0.5) * 0.006
    assert out["head"].item() > head_12
    pred["vertices_iters"][-1] = batch["vertices"] + d
    assert TRGLoss().double()(pred, batch, make_inputs(batch))["head"].item() == pytest.approx(20 * 1.75 * 0.006)


def test_edge_term_for_scaled_face():
    batch = make_batch()
    pred = make_pred(batch)
    pred["vertices_iters"][-1] = 1.1 * batch["vertices"]
    tri = arkit_face()["triangles"]
    edges = {tuple(sorted((int(a), int(b)))) for f in tri for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    assert len(edges) == len(unique_edges(tri))
    V = MEAN.numpy()
    mean_len = np.mean([np.linalg.norm(V[a] - V[b]) for a, b in edges])
    assert only("ed")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(0.1 * mean_len, rel=1e-9)
    pred["vertices_iters"][0] = 2 * batch["vertices"]  # only the final iteration counts
    assert only("ed")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(0.1 * mean_len, rel=1e-9)


def test_rotation_term_is_frobenius_distance_not_squared():
    batch = make_batch()
    pred = make_pred(batch)
    Rz = G.axis_rotation("z", torch.tensor(math.pi / 2, dtype=torch.float64))
    pred["R_iters"] = [Rz.expand(2, 3, 3)] * 3
    # |Rz(theta) - I|_F = 2 sqrt(1 - cos theta) = 2 at 90 degrees; lambda_rot = 10
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    assert out["rot"].item() == pytest.approx(10 * 1.75 * 2.0)
    # only the final iteration wrong (weight 1), by 60 degrees about x: 2 sqrt(1 - cos 60) = sqrt(2)
    pred["R_iters"] = [batch["R"]] * 2 + [G.axis_rotation("x", torch.tensor(math.pi / 3, dtype=torch.float64)).expand(2, 3, 3)]
    assert only("rot")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(2 * math.sqrt(1 - 0.5))


def test_landmark_term_in_normalised_crop_coordinates():
    batch = make_batch()
    pred = make_pred(batch)
    # box (10, 20, 110, 120) at S = 64: x' = 0.64 (x - 10); full px (10, 20) -> crop (0, 0) -> normalised (-1, -1)
    batch["landmarks_2d"][0, 0] = torch.tensor([10.0, 20.0], dtype=torch.float64)
    batch["landmarks_2d"][0, 1] = torch.tensor([10 + 63 / 0.64, 20 + 63 / 0.64], dtype=torch.float64)
    pred["heatmap_landmarks"][0, :2] = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    assert only("landmarks")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(0.0, abs=1e-12)
    pred["heatmap_landmarks"] = pred["heatmap_landmarks"] + torch.tensor([0.1, -0.05], dtype=torch.float64)
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    assert out["landmarks"].item() == pytest.approx(1.25 * 0.15)
    assert out["loss"].item() == pytest.approx(1.25 * 0.15)


def _wrong_everywhere(pred, i):
    """Large errors in every predicted quantity of sample ``i``."""
    for lst in (pred["vertices_iters"], pred["t_iters"]):
        for x in lst:
            x[i] += 0.5
    pred["R_iters"] = [r.clone() for r in pred["R_iters"]]
    for r in pred["R_iters"]:
        r[i] = G.axis_rotation("y", torch.tensor(1.0, dtype=torch.float64))
    pred["heatmap_landmarks"][i] += 0.3


def test_sample_without_vertices_adds_nothing_to_3d_terms_and_is_not_counted():
    batch = make_batch()
    pred = make_pred(batch)
    d = torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)
    pred["t_iters"] = [t + d for t in pred["t_iters"]]
    ref = TRGLoss().double()(pred, batch, make_inputs(batch))
    _wrong_everywhere(pred, 1)
    batch["has_vertices"][1] = False
    batch["vertices"][1] = float("nan")  # unlabelled data must not leak
    batch["vertices_mask"][1] = False
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    for k in ("head", "cam", "img", "ed"):
        assert out[k].item() == pytest.approx(ref[k].item(), abs=1e-12), k  # the mean over sample 0 alone
    assert out["rot"].item() > 0 and out["landmarks"].item() > 0  # sample 1 still has R and landmarks


def test_landmark_only_sample_contributes_only_to_landmarks():
    batch = make_batch()
    pred = make_pred(batch)
    _wrong_everywhere(pred, 1)
    for k in ("R", "t", "K", "vertices"):
        batch[f"has_{k}"][1] = False
    batch["topology"][1] = ""
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    for k in ("head", "cam", "img", "rot", "ed"):
        assert out[k].item() == pytest.approx(0.0, abs=1e-12), k
    assert out["landmarks"].item() == pytest.approx(1.25 * 0.6 / 2)  # |0.3|+|0.3|, averaged over 2 samples


def test_batch_without_3d_labels_is_finite_and_differentiable():
    batch = make_batch()
    pred = make_pred(batch)
    for k in ("R", "t", "K", "vertices"):
        batch[f"has_{k}"][:] = False
    batch["vertices"] = torch.zeros(2, 0, 3, dtype=torch.float64)  # collate of samples without vertices
    batch["vertices_mask"] = torch.zeros(2, 0, dtype=torch.bool)
    leaf = pred["vertices_iters"][-1].requires_grad_()
    out = TRGLoss().double()(pred, batch, make_inputs(batch))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.all(leaf.grad == 0)


def test_vertex_count_or_topology_mismatch_masks_the_sample():
    batch = make_batch()
    pred = make_pred(batch)
    pred["vertices_iters"] = [v + 0.01 for v in pred["vertices_iters"]]
    batch["vertices_mask"][1, 1000:] = False  # sample 1 has another vertex count
    assert only("head")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(1.75 * 0.03)
    batch["vertices_mask"][1] = True
    batch["topology"][0] = "other"
    batch["vertices"][0] = 5.0
    assert only("head")(pred, batch, make_inputs(batch))["loss"].item() == pytest.approx(1.75 * 0.03)


def test_gradients_reach_every_iteration_and_the_heatmap():
    batch = make_batch()
    pred = make_pred(batch)
    leaves = [pred["vertices_iters"][0], pred["t_iters"][1], pred["R_iters"][2], pred["heatmap_landmarks"]]
    for x in leaves:
        x.requires_grad_()
    pred["t_iters"] = [t + 0.01 for t in pred["t_iters"]]
    pred["vertices_iters"] = [v + 0.001 for v in pred["vertices_iters"]]
    pred["heatmap_landmarks"] = pred["heatmap_landmarks"] + 0.01
    pred["R_iters"] = [r @ G.axis_rotation("x", torch.tensor(0.1, dtype=torch.float64)) for r in pred["R_iters"]]
    TRGLoss().double()(pred, batch, make_inputs(batch))["loss"].backward()
    for x in leaves:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _compose(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_configs_weights_and_ablations():
    cfg = _compose("model=trg")
    assert cfg.hydra.runtime.choices["loss"] == "trg_code"  # the authors' reductions (tests/test_trg_code_loss.py)
    assert cfg.model.net._target_ == "hpe_bench.models.trg.TRG" and cfg.model.crop.size == 192
    assert cfg.model.optimizer.lr == pytest.approx(1e-4)
    paper = instantiate(_compose("model=trg", "loss=trg_paper").loss)
    assert isinstance(paper, TRGLoss)
    assert paper.weights == {"head": 20.0, "cam": 2.0, "img": 0.01, "rot": 10.0, "ed": 2.0, "landmarks": 1.25}
    base = instantiate(cfg.loss).weights
    assert base == dict(paper.weights, landmarks5=0.1)
    for option, zeroed in (("trg_no_rot", "rot"), ("trg_no_cam", "cam"), ("trg_no_landmarks", "landmarks")):
        w = instantiate(_compose("model=trg", f"loss={option}").loss).weights
        assert w == dict(base, **{zeroed: 0.0}), option


def test_paper_step_schedule_divides_lr_by_ten_after_two_thirds():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = paper_step_schedule(opt, total_steps=30)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:20] == [pytest.approx(1e-4)] * 20 and lrs[20:] == [pytest.approx(1e-5)] * 10


@pytest.mark.slow
def test_tiny_cli_run_writes_dense_metrics(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    overrides = [
        "model=trg", "debug=default", "data.train.num_samples=8", "data.val.num_samples=4", "data.test.num_samples=8",
        "data.batch_size=4", "logger=none", "model.net.backbone=resnet10t", "callbacks.prediction_images.num_images=2",
        f"paths.output_dir={tmp_path / 'out'}",
    ]
    proc = subprocess.run([sys.executable, "-m", "hpe_bench", *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    (path,) = (tmp_path / "out").rglob("metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["model"] == "trg" and metrics["loss"] == "trg_code" and metrics["num_samples"] == 8
    for key in ("add_mm", "dense_mean_mm", "geodesic_deg", "mae_t_mm"):
        assert key in metrics and math.isfinite(metrics[key]), key
