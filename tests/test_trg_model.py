"""TRG model: translation <-> correction algebra, sampler geometry and gradients, initial state, size."""
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.assets import arkit_face
from hpe_bench.models import create_model, list_models
from hpe_bench.models.crop import CropInput
from hpe_bench.models.trg_parts import (correction_to_translation, sample_features, soft_argmax,
                                        translation_to_correction)

S = 192


def _batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = 400 + 600 * torch.rand(B, generator=g)
    cx, cy = 300 + 40 * torch.rand(B, generator=g), 220 + 40 * torch.rand(B, generator=g)
    K = G.make_intrinsics(f, f * 1.02, cx, cy)
    x0 = 100 + 200 * torch.rand(B, generator=g)
    y0 = 80 + 150 * torch.rand(B, generator=g)
    side = 100 + 100 * torch.rand(B, generator=g)
    box = torch.stack([x0, y0, x0 + side, y0 + side * 0.9], -1)
    image = torch.rand(B, 3, 480, 640, generator=g)
    return {"image": image, "box": box, "K": K, "has_K": torch.ones(B, dtype=torch.bool)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("trg").eval()


@pytest.fixture(scope="module")
def inputs():
    return CropInput(size=S)(_batch())


@pytest.fixture(scope="module")
def output(model, inputs):
    return model(inputs)


def _random_geometry(n, seed=1, dtype=torch.float64):
    """Random poses in front of random cameras and the square boxes of the projected mean face."""
    g = torch.Generator().manual_seed(seed)
    R = G.rotvec_to_matrix(0.6 * (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5))
    t = torch.stack([0.4 * torch.rand(n, generator=g, dtype=dtype) - 0.2,
                     0.4 * torch.rand(n, generator=g, dtype=dtype) - 0.2,
                     0.3 + 2.0 * torch.rand(n, generator=g, dtype=dtype)], -1)
    f = 300 + 1500 * torch.rand(n, generator=g, dtype=dtype)
    fy = f * (0.9 + 0.2 * torch.rand(n, generator=g, dtype=dtype))
    cx, cy = (200 + 400 * torch.rand(2, n, generator=g, dtype=dtype)).unbind(0)
    K = G.make_intrinsics(f, fy, cx, cy)
    V = torch.as_tensor(arkit_face()["mean_vertices"], dtype=dtype)
    uv = G.project_points(G.transform_points(V, R, t), K)
    box = G.square_box(G.box_from_points(uv), 1.2)
    return R, t, K, box


def test_registered():
    assert "trg" in list_models()


def test_output_shapes(output):
    B = 2
    assert output["R"].shape == (B, 3, 3) and output["t"].shape == (B, 3)
    assert output["vertices"].shape == (B, 1220, 3)
    assert output["landmarks_2d"].shape == (B, 68, 2) and output["heatmap_landmarks"].shape == (B, 68, 2)
    for key in ("R_iters", "t_iters", "vertices_iters", "translation_params_iters", "sampling_points_iters"):
        assert len(output[key]) == 3
    assert [p.shape[1] for p in output["sampling_points_iters"]] == [324, 305, 305]
    assert output["translation_params_iters"][-1].shape == (B, 3)
    assert torch.equal(output["R"], output["R_iters"][-1]) and torch.equal(output["t"], output["t_iters"][-1])
    assert output["heatmap_landmarks"].abs().max() <= 1.0


def test_translation_round_trip_float64():
    R, t, K, box = _random_geometry(64)
    c = translation_to_correction(t, box, K)  # GT (R, t, K, box) -> GT correction
    assert torch.allclose(correction_to_translation(c, box, K), t, rtol=0, atol=1e-12)
    # and the other way round, including the reference code's image-centre variant
    size = torch.tensor([1280.0, 720.0], dtype=torch.float64).expand(64, 2)
    g = torch.Generator().manual_seed(2)
    c_rand = torch.rand(64, 3, dtype=torch.float64, generator=g) * torch.tensor([1.0, 0.4, 0.4], dtype=torch.float64) \
        + torch.tensor([0.5, -0.2, -0.2], dtype=torch.float64)
    for kw in ({}, {"principal": "image_centre", "image_size": size}):
        back = translation_to_correction(correction_to_translation(c_rand, box, K, **kw), box, K, **kw)
        assert torch.allclose(back, c_rand, rtol=0, atol=1e-12)


def test_translation_matches_paper_eq2_and_projects_to_offset_box_centre():
    _, t, K, box = _random_geometry(32)
    c = translation_to_correction(t, box, K)
    s, dx, dy = c.unbind(-1)
    b = box[:, 2] - box[:, 0]
    centre = (box[:, :2] + box[:, 2:]) / 2
    # Derived relation: projecting t with K lands at box centre + b * (dx, dy) (u - cx = f Tx / Tz = tau + b dx).
    uv = G.project_points(t.unsqueeze(1), K).squeeze(1)
    assert torch.allclose(uv, centre + b.unsqueeze(-1) * torch.stack([dx, dy], -1), atol=1e-9)
    # Paper Eq. 2 literally, for fx = fy = f.
    Ks = K.clone()
    Ks[:, 1, 1] = Ks[:, 0, 0]
    f, tau = Ks[:, 0, 0], centre - Ks[:, :2, 2]
    T = correction_to_translation(c, box, Ks)
    assert torch.allclose(T[:, 2], 0.2 * s * f / b, atol=1e-12)
    assert torch.allclose(T[:, 0], 0.2 * s * tau[:, 0] / b + 0.2 * s * dx, atol=1e-12)
    assert torch.allclose(T[:, 1], 0.2 * s * tau[:, 1] / b + 0.2 * s * dy, atol=1e-12)


def test_crop_and_full_image_give_same_translation():
    _, t, K, box = _random_geometry(16)
    c = translation_to_correction(t, box, K)
    crop_box = torch.tensor([0.0, 0.0, S, S], dtype=torch.float64).expand(16, 4)
    T_crop = correction_to_translation(c, crop_box, G.crop_intrinsics(K, box, S))
    assert torch.allclose(T_crop, t, atol=1e-10)


def test_normalisation_matches_grid_sample_align_corners():
    # A feature map covering the crop whose value is the crop pixel x (resp. y): sampling returns the pixel.
    xs = torch.arange(S, dtype=torch.float64)
    fmap = torch.stack([xs.expand(S, S), xs.unsqueeze(1).expand(S, S)]).unsqueeze(0)
    px = torch.rand(1, 50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (S - 1)
    got = sample_features(fmap, G.crop_to_normalized(px, S))
    assert torch.allclose(got, px, atol=1e-9)
    assert torch.allclose(G.normalized_to_crop(G.crop_to_normalized(px, S), S), px)


def test_soft_argmax_peak():
    h = torch.full((1, 2, 48, 48), -1e4)
    h[0, 0, 5, 40] = 0.0
    h[0, 1, 47, 0] = 0.0
    lin = torch.linspace(-1, 1, 48)
    assert torch.allclose(soft_argmax(h)[0], torch.stack([torch.stack([lin[40], lin[5]]), torch.tensor([-1.0, 1.0])]))


def test_sampling_points_are_projections_of_previous_face(model, inputs, output):
    sub = torch.as_tensor(arkit_face()["subsample_305"])
    for i in (1, 2):
        prev = {k: output[f"{k}_iters"][i - 1] for k in ("vertices", "R", "t")}
        cam = G.transform_points(prev["vertices"][:, sub], prev["R"], prev["t"])
        full_px = G.project_points(cam, inputs["K"])  # full image, then the crop warp A: independent of K_crop
        crop_px = G.apply_transform_2d(inputs["A"], full_px)
        expected = crop_px / (S - 1) * 2 - 1
        assert torch.allclose(output["sampling_points_iters"][i], expected, atol=1e-4)
    grid = output["sampling_points_iters"][0]
    assert torch.allclose(grid.amin(1), torch.tensor(-1.0)) and torch.allclose(grid.amax(1), torch.tensor(1.0))


def test_landmarks_2d_are_heatmap_landmarks_in_full_image(inputs, output):
    back = G.apply_transform_2d(inputs["A"], output["landmarks_2d"])
    assert torch.allclose(back, G.normalized_to_crop(output["heatmap_landmarks"], S), atol=1e-3)


def test_sampler_passes_gradient_to_previous_vertices(model, inputs, output):
    assert output["sampling_points_iters"][1].grad_fn is not None
    V = output["vertices_iters"][0].detach().clone().requires_grad_(True)
    R, t = output["R_iters"][0].detach(), output["t_iters"][0].detach()
    points = model.sampling_points(V, R, t, inputs["K_crop"], S)
    fmap = torch.randn(2, 256, 48, 48, generator=torch.Generator().manual_seed(0))
    feats = model.reducers[1](sample_features(fmap, points))
    loss = feats.sum() + sample_features(fmap, points).square().sum()
    loss.backward()
    assert V.grad is not None
    # Only the 305 sampled vertices receive gradient: test "zero outside, nonzero inside" per element and
    # per sample, never by comparing two float sums (their summation order differs between CPU kernels).
    inside = torch.zeros(V.shape[1], dtype=torch.bool)
    inside[torch.as_tensor(arkit_face()["subsample_305"])] = True
    g_in, g_out = V.grad[:, inside].abs(), V.grad[:, ~inside].abs()
    assert (~inside).sum() > 0 and bool(torch.isfinite(V.grad).all())
    assert (g_in.flatten(1).amax(1) > 1e-8).all()  # every sample's subset vertices get gradient
    torch.testing.assert_close(g_out, torch.zeros_like(g_out), rtol=0, atol=1e-12 * float(g_in.max()))


def test_initial_state_with_zero_residuals():
    # Small crop (the network is resolution-agnostic) to keep the test fast; also exercises the options.
    inputs = CropInput(size=64)(_batch())
    torch.manual_seed(0)
    m = create_model("trg", iterations=2, multiscale=False, backbone="resnet10t", hidden=64).eval()
    with torch.no_grad():
        for reg in m.regressors:
            for head in (reg.vertex_head, reg.pose_head):
                head.weight.zero_()
                head.bias.zero_()
        out = m(inputs)
    face = arkit_face()
    mean = torch.as_tensor(face["mean_vertices"]).expand(2, -1, -1)
    R0 = torch.as_tensor(face["init_rotation"]).expand(2, 3, 3)
    c0 = torch.tensor([1.0, 0.0, 0.0]).expand(2, 3)
    assert len(out["R_iters"]) == 2
    for V, R, c, t in zip(out["vertices_iters"], out["R_iters"], out["translation_params_iters"], out["t_iters"]):
        assert torch.equal(V, mean) and torch.equal(c, c0)
        assert torch.allclose(R, R0, atol=1e-5)
        assert torch.allclose(t, correction_to_translation(c0, inputs["box"], inputs["K"]))


def test_train_mode_backward():
    torch.manual_seed(0)
    model = create_model("trg", backbone="resnet10t", hidden=64).train()  # light trunk/regressor, same code path
    out = model(CropInput(size=64)(_batch()))
    (out["t"].sum() + out["vertices"].sum() + out["heatmap_landmarks"].sum()).backward()
    assert model.backbone.parameters().__next__().grad.abs().sum() > 0


def test_parameter_count(model):
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 37.6e6) / 37.6e6 < 0.01, n


@pytest.mark.parametrize("iterations", [1, 3])
def test_single_scale_iteration_ablations_run(iterations):
    """TRG Table 1 variants (conf/model/trg_iter*_single.yaml): every iteration samples phi_1."""
    import numpy as np

    from hpe_bench.schema import collate

    torch.manual_seed(0)
    net = create_model("trg", iterations=iterations, multiscale=False, backbone="resnet10t", hidden=64).eval()
    s = {"image": np.zeros((64, 64, 3), np.uint8), "box": np.array([8.0, 8, 56, 56]), "dataset": "toy",
         "sample_id": "0", "topology": "", "K": np.array([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]])}
    out = net(CropInput(size=64)(collate([s, dict(s, sample_id="1")])))
    assert len(out["R_iters"]) == iterations and out["vertices"].shape == (2, 1220, 3)
