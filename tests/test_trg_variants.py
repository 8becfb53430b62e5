"""TRG ablation variants (paper Tables 1, 6, 7): translation rules, sampling, geometry-free, I_bbox, single scale;
fallback intrinsics (no K) and offline ``pretrained``. Small crops and a light backbone keep this fast."""
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hpe_bench import geometry as G
from hpe_bench.assets import ARKIT_TOPOLOGY, arkit_face
from hpe_bench.losses.trg import TRGLoss
from hpe_bench.metrics import build_metrics, compute_flat, per_sample_errors
from hpe_bench.models.crop import CropInput
from hpe_bench.models.trg import TRG
from hpe_bench.models.trg_parts import TRANSLATION_RULES, local_frame, params_to_translation, translation_to_params
from hpe_bench.schema import collate

CONF = Path(__file__).resolve().parents[1] / "conf"
S = 64
GRID = 6
LIGHT = {"backbone": "resnet10t", "grid_size": GRID, "hidden": 64}  # same code paths, a fraction of the cost
VARIANTS = {  # YAML -> expected net switches (everything else as conf/model/trg.yaml)
    "trg_iter1_single": {"iterations": 1, "multiscale": False},
    "trg_iter2_single": {"iterations": 2, "multiscale": False},
    "trg_iter3_single": {"iterations": 3, "multiscale": False},
    "trg_t_prediction": {"translation": "direct"},
    "trg_landmark_free": {"geometry": False, "heatmaps": False, "sampling": "grid"},
    "trg_grid_sampled": {"sampling": "grid"},
    "trg_local_to_global": {"translation": "local_to_global"},
    "trg_camera_offset": {"translation": "camera_offset"},
    "trg_no_bbox_info": {"bbox_info": "none"},
    "trg_no_box_size": {"bbox_info": "no_size"},
}


def _sample(i, K=True, t=True, size=96):
    face = torch.as_tensor(arkit_face()["mean_vertices"])
    R = G.rotvec_to_matrix(torch.tensor([0.1 * i, -0.2, 0.05]))
    tt = torch.tensor([0.02 * i, -0.01, 0.6])
    Km = G.make_intrinsics(*(torch.tensor(v) for v in (120.0, 125.0, 50.0 + i, 46.0)))
    uv = G.project_points(G.transform_points(face, R, tt), Km)
    s = {"image": np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8),
         "box": G.box_from_points(uv).numpy(), "dataset": "toy", "sample_id": str(i), "topology": ARKIT_TOPOLOGY,
         "R": R.numpy(), "vertices": face.numpy()}
    if K:
        s["K"] = Km.numpy()
    if t:
        s["t"] = tt.numpy()
    return s


@pytest.fixture(scope="module")
def batch():
    return collate([_sample(0), _sample(1)])


@pytest.fixture(scope="module")
def inputs(batch):
    return CropInput(size=S)(batch)


def _net(**kw):
    torch.manual_seed(0)
    return TRG(**LIGHT, **kw).eval()


def _zero_heads(net):
    with torch.no_grad():
        for reg in net.regressors:
            for head in (reg.vertex_head, reg.pose_head):
                if head is not None:
                    head.weight.zero_()
                    head.bias.zero_()
    return net


def _random_geometry(n, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    t = torch.stack([0.4 * torch.rand(n, generator=g, dtype=dtype) - 0.2, 0.4 * torch.rand(n, generator=g, dtype=dtype)
                     - 0.2, 0.3 + 2.0 * torch.rand(n, generator=g, dtype=dtype)], -1)
    f = 300 + 1500 * torch.rand(n, generator=g, dtype=dtype)
    cx, cy = (200 + 400 * torch.rand(2, n, generator=g, dtype=dtype)).unbind(0)
    K = G.make_intrinsics(f, f * 1.05, cx, cy)
    uv = G.project_points(t.unsqueeze(1), K).squeeze(1) + 30 * torch.randn(n, 2, generator=g, dtype=dtype)
    side = 0.25 * f / t[:, 2]
    box = torch.cat([uv - side[:, None] / 2, uv + side[:, None] / 2], -1)
    return t, K, box


# -- configs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def variant_cfgs():
    """``model=<name>`` for trg and every variant, with the light trunk / grid / regressor width for the tests."""
    light = ["model.net.backbone=resnet10t", f"model.net.grid_size={GRID}", "model.net.hidden=64"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return {name: compose("config", overrides=[f"model={name}", *light]) for name in ["trg", *VARIANTS]}


def test_every_variant_yaml_sets_its_switches_and_keeps_the_rest(variant_cfgs):
    base = variant_cfgs["trg"].model.net
    for name, switches in VARIANTS.items():
        net = variant_cfgs[name].model.net
        assert net._target_ == "hpe_bench.models.trg.TRG", name
        for key in base:
            assert net[key] == switches.get(key, base[key]), (name, key)
        assert variant_cfgs[name].model.crop == variant_cfgs["trg"].model.crop, name


def test_experiment_presets_pick_one_switch_each():
    """experiment=trg_<row>: the paper run with exactly that model or loss option (docs/reproducing.md#trg)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for name in [*VARIANTS, "trg_no_rot", "trg_no_cam", "trg_no_landmarks", "trg", "trg_arkit"]:
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
            choices = cfg.hydra.runtime.choices
            is_loss = name in ("trg_no_rot", "trg_no_cam", "trg_no_landmarks")
            assert choices["model"] == (name if name in VARIANTS else "trg"), name
            assert choices["loss"] == (name if is_loss else "trg_code"), name  # the authors' reductions
            assert choices["augment"] == "trg" and cfg.data.batch_size == 256, name
            assert choices["data"] == ("arkitface" if name == "trg_arkit" else "mix_trg"), name


def test_every_variant_builds_and_runs_forward(variant_cfgs, inputs):
    """Every preset instantiates from its YAML and gives the outputs its switches promise."""
    for name in VARIANTS:
        cfg = variant_cfgs[name]
        torch.manual_seed(0)
        net = instantiate(cfg.model.net).eval()
        with torch.no_grad():
            out = net(inputs)
        n_it = VARIANTS[name].get("iterations", 3)
        assert out["R"].shape == (2, 3, 3) and out["t"].shape == (2, 3) and len(out["t_iters"]) == n_it, name
        assert torch.isfinite(out["t"]).all() and torch.isfinite(out["R"]).all(), name
        assert ("vertices" in out) == VARIANTS[name].get("geometry", True), name
        assert ("landmarks_2d" in out) == VARIANTS[name].get("heatmaps", True), name


@pytest.mark.parametrize("switches", [{"translation": "local_to_global"}, {"geometry": False, "heatmaps": False,
                                                                           "sampling": "grid"}])
def test_variant_loss_trains_trunk_and_regressor(batch, inputs, switches):
    """One TRG loss backward reaches the trunk and the first regressor (the two variants with new loss paths)."""
    net = _net(**switches).train()
    terms = TRGLoss()(net(inputs), batch, inputs)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and terms["cam"] > 0 and terms["rot"] > 0
    assert next(net.backbone.parameters()).grad.abs().sum() > 0
    assert net.regressors[0].trunk[0].weight.grad.abs().sum() > 0


# -- translation rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", TRANSLATION_RULES)
def test_translation_rule_round_trip_float64(rule):
    t, K, box = _random_geometry(64)
    p = translation_to_params(rule, t, box, K)
    assert torch.allclose(params_to_translation(rule, p, box, K), t, rtol=0, atol=1e-12)


def test_rules_centred_parameters_put_the_head_on_the_box_centre_ray():
    """Zero offsets: the head centre projects onto the box centre; depth 0.2 f / b for the box-scale rules."""
    t, K, box = _random_geometry(16)
    centre, b, fx = (box[:, :2] + box[:, 2:]) / 2, box[:, 2] - box[:, 0], K[:, 0, 0]
    for rule, p in (("correction", (1.0, 0.0, 0.0)), ("camera_offset", (1.0, 0.0, 0.0)),
                    ("local_to_global", (0.0, 0.0, 0.4))):
        T = params_to_translation(rule, torch.tensor(p, dtype=torch.float64).expand(16, 3), box, K)
        assert torch.allclose(G.project_points(T.unsqueeze(1), K).squeeze(1), centre, atol=1e-9), rule
        if rule != "local_to_global":
            assert torch.allclose(T[:, 2], 0.2 * fx / b, atol=1e-12), rule
        else:  # distance along the box-centre ray = 0.2 f / b
            assert torch.allclose((local_frame(box, K).transpose(-1, -2) @ T.unsqueeze(-1))[:, 2, 0],
                                  0.2 * fx / b, atol=1e-12)


def test_camera_offset_is_metric_and_correction_offset_scales_with_s():
    t, K, box = _random_geometry(8)
    d = torch.tensor([0.0, 0.03, -0.02], dtype=torch.float64)
    for s in (0.5, 2.0):
        p = torch.tensor([s, 0.1, 0.05], dtype=torch.float64).expand(8, 3)
        shift = (params_to_translation("camera_offset", p + d, box, K)
                 - params_to_translation("camera_offset", p, box, K))
        assert torch.allclose(shift, torch.tensor([0.03, -0.02, 0.0], dtype=torch.float64).expand(8, 3), atol=1e-12)
        shift = params_to_translation("correction", p + d, box, K) - params_to_translation("correction", p, box, K)
        # Eq. 2 (fx = fy only for x): Tx changes by 0.2 s ddx
        assert torch.allclose(shift[:, 0], torch.full((8,), 0.2 * s * 0.03, dtype=torch.float64), atol=1e-12)


def test_t_prediction_does_not_use_box_or_intrinsics(inputs):
    net = _zero_heads(_net(translation="direct", iterations=1, init_translation=(0.01, -0.02, 0.7)))
    moved = dict(inputs, box=inputs["box"] + 13.0, K=inputs["K"] * torch.tensor([2.0, 2.0, 1.0]).view(1, 3, 1))
    with torch.no_grad():
        for x in (inputs, moved):
            out = net(x)
            assert torch.equal(out["t"], torch.tensor([0.01, -0.02, 0.7]).expand(2, 3))
            assert torch.equal(out["t_iters"][0], out["translation_params_iters"][0])


def test_local_to_global_rotation_is_local_frame_times_local_rotation(inputs):
    net = _zero_heads(_net(translation="local_to_global", iterations=1))
    with torch.no_grad():
        out = net(inputs)
    R0 = torch.as_tensor(arkit_face()["init_rotation"], dtype=torch.float32)
    Q = local_frame(inputs["box"], inputs["K"])
    assert torch.allclose(out["R"], Q @ R0, atol=1e-5)
    assert G.geodesic_angle(Q, torch.eye(3).expand_as(Q)).min() > 1e-3  # the boxes are off-axis: Q is not I


# -- regressor inputs: I_bbox ablations ---------------------------------------------------------------------
@pytest.mark.parametrize("bbox_info, fewer, ignored", [("full", 0, ()), ("no_size", 1, (2,)), ("none", 3, (0, 1, 2))])
def test_bbox_info_ablation_input_size_and_dependence(inputs, bbox_info, fewer, ignored):
    net = _net(bbox_info=bbox_info, iterations=1, heatmaps=False)
    n_full = 5 * GRID ** 2 + 3 * 305 + 6 + 3 + 3
    assert net.regressors[0].trunk[0].in_features == n_full - fewer
    with torch.no_grad():
        ref = net(inputs)["translation_params_iters"][0]
        for k in range(3):
            info = inputs["bbox_info"].clone()
            info[:, k] += 0.5
            got = net(dict(inputs, bbox_info=info))["translation_params_iters"][0]
            assert torch.equal(got, ref) == (k in ignored), k


# -- sampling -----------------------------------------------------------------------------------------------
def test_grid_sampled_baseline_uses_the_grid_every_iteration_without_gradient(inputs):
    net = _net(sampling="grid", heatmaps=False)
    out = net(inputs)
    grid = out["sampling_points_iters"][0]
    assert grid.shape == (2, GRID ** 2, 2)
    for pts in out["sampling_points_iters"]:
        assert torch.equal(pts, grid) and pts.grad_fn is None
    assert len({r.trunk[0].in_features for r in net.regressors}) == 1
    projected = _net(heatmaps=False)(inputs)["sampling_points_iters"]
    assert projected[1].shape == (2, 305, 2) and projected[1].grad_fn is not None


def test_landmark_free_has_no_geometry_and_its_loss_poses_the_gt_face(batch, inputs):
    net = _net(geometry=False, heatmaps=False, sampling="grid")
    assert net.regressors[0].trunk[0].in_features == 5 * GRID ** 2 + 6 + 3 + 3
    assert all(r.vertex_head is None for r in net.regressors) and net.heatmap is None
    out = net(inputs)
    assert not {"vertices", "vertices_iters", "landmarks_2d", "heatmap_landmarks"} & set(out)
    terms = TRGLoss()(out, batch, inputs)
    assert terms["head"] == 0 and terms["ed"] == 0 and terms["landmarks"] == 0
    # L_cam by hand: the GT face posed by the predicted pose vs by the GT pose, weights 1/4, 1/2, 1, lambda 2
    V = torch.as_tensor(arkit_face()["mean_vertices"], dtype=torch.float32)
    cam_gt = G.transform_points(V, batch["R"], batch["t"])
    expected = sum(w * (G.transform_points(V, R, t) - cam_gt).abs().sum(-1).mean()
                   for w, R, t in zip((0.25, 0.5, 1.0), out["R_iters"], out["t_iters"]))
    assert torch.allclose(terms["cam"], 2.0 * expected, rtol=1e-4)
    with pytest.raises(ValueError, match="sampling='projected' needs geometry"):
        TRG(geometry=False, **LIGHT)


def test_single_scale_samples_only_phi1(inputs):
    """Perturbing phi_2 / phi_3 (deconvs 2 and 3) changes the pose only when the iterations use multi-scale maps."""
    for multiscale in (False, True):
        net = _net(multiscale=multiscale, heatmaps=False)
        with torch.no_grad():
            ref = net(inputs)
            for block in net.deconvs[1:]:
                block[0].weight.mul_(1.5)
            out = net(inputs)
        assert torch.equal(out["t_iters"][0], ref["t_iters"][0])  # iteration 1 samples phi_1 either way
        assert torch.equal(out["t"], ref["t"]) == (not multiscale)


def test_invalid_switch_names_the_config_key():
    for kw, key in (({"translation": "cliff"}, "model.net.translation"), ({"sampling": "random"}, "model.net.sampling"),
                    ({"bbox_info": "all"}, "model.net.bbox_info")):
        with pytest.raises(ValueError, match=key):
            TRG(**kw)


# -- no intrinsics (AFLW2000-3D-like) -----------------------------------------------------------------------
def test_without_K_uses_fallback_and_only_rotation_is_scored():
    """Samples without K and t: f = W + H fallback, rotation scored for all, translation/ADD for none;
    a mixed batch counts translation only for the sample that has t."""
    samples = [_sample(0, K=False, t=False), _sample(1, K=False, t=False), _sample(2, K=True, t=True)]
    batch = collate(samples)
    x = CropInput(size=S)(batch)
    fb = G.fallback_intrinsics(96, 96)
    assert torch.allclose(x["K"][:2], fb.expand(2, 3, 3)) and torch.allclose(x["K"][0, 0, 0], torch.tensor(192.0))
    net = _net(iterations=1, heatmaps=False)
    with torch.no_grad():
        pred = net(x)
    assert torch.isfinite(pred["R"]).all() and torch.isfinite(pred["t"]).all()
    metrics = build_metrics("trg")
    metrics.update(pred, batch)
    m = compute_flat(metrics)
    assert m["count_rotation"] == 3 and m["count_translation"] == 1 and m["count_add"] == 1
    errors = per_sample_errors(pred, batch, "trg")
    assert torch.isnan(errors["mae_t_mm"][:2]).all() and torch.isfinite(errors["mae_t_mm"][2])
    assert torch.isfinite(errors["geodesic_deg"]).all()
    # the loss trains rotation and head-frame shape on them, translation terms only on the sample with t
    loss = TRGLoss()(pred, batch, x)
    assert torch.isfinite(loss["loss"]) and loss["rot"] > 0


# -- offline pretrained -------------------------------------------------------------------------------------
def test_pretrained_offline_falls_back_fast_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        net = TRG(pretrained=True, iterations=1, **LIGHT)
    assert time.monotonic() - start < 30
    assert any("random init" in r.getMessage() and "resnet10t" in r.getMessage() for r in caplog.records)
    assert isinstance(net, TRG)
