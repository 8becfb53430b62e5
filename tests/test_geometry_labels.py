"""geometry.labels: the intrinsics rule for images without K and every schema label under an image map, checked
against values derived by hand (scale + shift, a plain flip, a quarter turn); the working crop and the batch
augmentation are the same implementation."""
import math

import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.augment import warp_batch
from hpe_bench.data.working_crop import working_crop, working_transform
from hpe_bench.schema import collate

D = torch.float64
W, H = 300, 200  # fallback: f = W + H = 500, principal point (150, 100)


def _K(f, cx, cy):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=D)


def _Ry(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=D)


def _labels(B=2):
    """Sample 0 has every label; sample 1 has no K, R, t, vertices (zeros, masks False)."""
    yes_no = torch.tensor([True, False] + [True] * (B - 2))
    lm = torch.stack([torch.arange(68, dtype=D), torch.full((68,), 30.0, dtype=D)], -1)  # point i at x = i
    return {
        "box": torch.tensor([[100.0, 50.0, 140.0, 70.0]], dtype=D).expand(B, 4).clone(),
        "K": torch.stack([_K(300.0, 150.0, 100.0), torch.zeros(3, 3, dtype=D)] + [_K(300.0, 150.0, 100.0)] * (B - 2)),
        "has_K": yes_no.clone(),
        "R": torch.stack([_Ry(0.4), torch.zeros(3, 3, dtype=D)] + [_Ry(0.4)] * (B - 2)),
        "has_R": yes_no.clone(),
        "t": torch.tensor([[0.1, -0.05, 0.8], [0.0, 0.0, 0.0]] + [[0.1, -0.05, 0.8]] * (B - 2), dtype=D),
        "has_t": yes_no.clone(),
        "landmarks_2d": lm.expand(B, 68, 2).clone(),
        "has_landmarks_2d": torch.ones(B, dtype=torch.bool),
        "landmarks_3d": torch.cat([lm, torch.full((68, 1), 5.0, dtype=D)], -1).expand(B, 68, 3).clone(),
        "has_landmarks_3d": torch.ones(B, dtype=torch.bool),
        "head_2d": torch.tensor([[100.0, 40.0, 3.0]], dtype=D).expand(B, 3).clone(),
        "has_head_2d": torch.ones(B, dtype=torch.bool),
        "vertices": torch.tensor([[[0.01, 0.02, 0.03], [0.0, 0.0, 0.0]]], dtype=D).expand(B, 2, 3).clone(),
        "has_vertices": yes_no.clone(),
        "vertices_mask": torch.ones(B, 2, dtype=torch.bool),
        "topology": ["no_such_topology"] * B,
    }


# ---------------------------------------------------------------------------------------------- intrinsics
def test_image_intrinsics_prefers_k_then_the_carried_fallback_then_this_images():
    K = torch.stack([_K(300.0, 10.0, 20.0), _K(1.0, 1.0, 1.0), _K(1.0, 1.0, 1.0)])
    K_fb = torch.stack([_K(7.0, 7.0, 7.0), _K(900.0, 30.0, 40.0), _K(7.0, 7.0, 7.0)])
    got = G.image_intrinsics(K, torch.tensor([True, False, False]), (W, H), K_fb, torch.tensor([True, True, False]))
    torch.testing.assert_close(got[0], _K(300.0, 10.0, 20.0))  # K wins even where a fallback is carried
    torch.testing.assert_close(got[1], _K(900.0, 30.0, 40.0))  # the original image's fallback, carried
    torch.testing.assert_close(got[2], _K(500.0, 150.0, 100.0))  # f = W + H, (W/2, H/2) of this image
    none = G.image_intrinsics(None, None, (W, H), batch_size=2)
    assert none.shape == (2, 3, 3) and none.dtype == torch.float32
    torch.testing.assert_close(none, _K(500.0, 150.0, 100.0).float().expand(2, 3, 3))
    with pytest.raises(ValueError, match="batch_size"):
        G.image_intrinsics(None, None, (W, H))


# ---------------------------------------------------------------------------------------------- label maps
def test_scale_and_shift_by_hand():
    # crop of the square (80, 20)-(160, 100) to 160 px: x' = 2 (x - 80), y' = 2 (y - 20), s = 2
    A = torch.tensor([[[2.0, 0.0, -160.0], [0.0, 2.0, -40.0], [0.0, 0.0, 1.0]]], dtype=D).expand(2, 3, 3)
    labels = _labels()
    out = G.transform_labels(labels, A, (W, H))
    torch.testing.assert_close(out["box"], torch.tensor([[40.0, 60.0, 120.0, 100.0]] * 2, dtype=D))
    lm = labels["landmarks_2d"][0]
    torch.testing.assert_close(out["landmarks_2d"][0], torch.stack([2 * (lm[:, 0] - 80), 2 * (lm[:, 1] - 20)], -1))
    torch.testing.assert_close(out["landmarks_3d"][1, :, 2], torch.full((68,), 10.0, dtype=D))  # z x s
    torch.testing.assert_close(out["head_2d"], torch.tensor([[40.0, 40.0, 6.0]] * 2, dtype=D))  # size x s
    torch.testing.assert_close(out["K"][0], _K(600.0, 140.0, 160.0))  # f' = 2 f, c' = 2 (c - origin)
    torch.testing.assert_close(out["K"][1], torch.zeros(3, 3, dtype=D))  # absent: unchanged
    # no K: the fallback of the pre-map image (f 500 at (150, 100)), mapped: f 1000 at (140, 160)
    assert out["has_K_fallback"].tolist() == [False, True]
    torch.testing.assert_close(out["K_fallback"][1], _K(1000.0, 140.0, 160.0))
    for key in ("R", "t", "vertices"):  # a crop does not move the camera or the head
        torch.testing.assert_close(out[key], labels[key], msg=key)
    assert out["has_vertices"].tolist() == [True, False]


def test_plain_flip_by_hand():
    S = torch.tensor([[[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=D).expand(2, 3, 3)
    labels = _labels()
    labels["shape_params"] = torch.zeros(2, 50, dtype=D)
    labels["has_shape_params"] = torch.tensor([True, False])
    out = G.transform_labels(labels, S, (W, H))
    torch.testing.assert_close(out["box"], torch.tensor([[W - 1 - 140.0, 50.0, W - 1 - 100.0, 70.0]] * 2, dtype=D))
    # point i sat at x = i; after the flip, index i holds the mirrored point IBUG68_MIRROR[i]
    want_x = W - 1.0 - torch.tensor(G.IBUG68_MIRROR, dtype=D)
    torch.testing.assert_close(out["landmarks_2d"][:, :, 0], want_x.expand(2, 68))
    torch.testing.assert_close(out["landmarks_3d"][:, :, 0], want_x.expand(2, 68))
    torch.testing.assert_close(out["K"][0], _K(300.0, W - 1 - 150.0, 100.0))  # cx -> W - 1 - cx
    torch.testing.assert_close(out["K_fallback"][1], _K(500.0, W - 1 - 150.0, 100.0))
    torch.testing.assert_close(out["R"][0], _Ry(-0.4))  # a yaw mirrors to the opposite yaw (S R S)
    torch.testing.assert_close(out["t"][0], torch.tensor([-0.1, -0.05, 0.8], dtype=D))
    torch.testing.assert_close(out["head_2d"][0], torch.tensor([W - 1 - 100.0, 40.0, 3.0], dtype=D))
    # a topology without a left/right permutation loses its dense label; the shape follows the BFM mirror map
    assert out["has_vertices"].tolist() == [False, False]
    torch.testing.assert_close(out["shape_params"][0], G.mirror_shape_params(torch.zeros(50, dtype=D)))
    torch.testing.assert_close(out["shape_params"][1], torch.zeros(50, dtype=D))  # absent: unchanged


def test_quarter_turn_about_the_principal_point_by_hand():
    c = torch.tensor([[150.0, 100.0]], dtype=D).expand(2, 2)
    S = G.similarity_transform(c, c, torch.ones(2, dtype=D), torch.full((2,), math.pi / 2, dtype=D))
    # Rot(90 deg) = [[0, -1], [1, 0]]: (x - 150, y - 100) -> (-(y - 100), x - 150)
    out = G.transform_labels(_labels(), S, (W, H))
    # box (100, 50)-(140, 70): dx in [-50, -10], dy in [-50, -30] -> dx' = -dy in [30, 50], dy' = dx in [-50, -10]
    torch.testing.assert_close(out["box"][0], torch.tensor([150.0 + 30, 100.0 - 50, 150.0 + 50, 100.0 - 10], dtype=D))
    torch.testing.assert_close(out["head_2d"][0], torch.tensor([150.0 + 60, 100.0 - 50, 3.0], dtype=D))
    torch.testing.assert_close(out["landmarks_3d"][0, :, 2], torch.full((68,), 5.0, dtype=D))  # s = 1
    torch.testing.assert_close(out["K"][0], _K(300.0, 150.0, 100.0), atol=1e-9, rtol=0)  # centre fixed, f kept
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=D)
    torch.testing.assert_close(out["R"][0], Rz @ _Ry(0.4), atol=1e-12, rtol=0)
    torch.testing.assert_close(out["t"][0], torch.tensor([0.05, 0.1, 0.8], dtype=D), atol=1e-12, rtol=0)


def test_input_untouched_and_a_non_similarity_refused():
    labels = _labels()
    before = {k: v.clone() for k, v in labels.items() if torch.is_tensor(v)}
    S = torch.tensor([[[2.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]], dtype=D).expand(2, 3, 3)  # a shear
    with pytest.raises(ValueError, match="similarity"):
        G.transform_labels(labels, S, (W, H))
    G.transform_labels(labels, torch.diag(torch.tensor([-2.0, 2.0, 1.0], dtype=D)).expand(2, 3, 3), (W, H))
    assert all(torch.equal(labels[k], v) for k, v in before.items())


# ---------------------------------------------------------------------------------- one implementation, two users
def test_working_crop_and_batch_warp_move_labels_alike():
    """The dataset-side working crop (numpy sample) and warp_batch (collated batch) under the same map agree."""
    rng = np.random.default_rng(0)
    base = {"image": rng.integers(0, 255, (H, W, 3), dtype=np.uint8), "box": np.array([100.0, 50.0, 140.0, 70.0]),
            "landmarks_2d": rng.uniform(100, 140, (68, 2)), "head_2d": np.array([120.0, 60.0, 2.0]),
            "R": _Ry(0.3).numpy(), "t": np.array([0.02, 0.01, 0.7]), "dataset": "toy", "sample_id": "a",
            "topology": ""}
    with_k = dict(base, K=_K(320.0, 140.0, 95.0).numpy())
    samples = [with_k, base]
    A = torch.as_tensor(working_transform(base["box"], 64, 2.0))
    crops = [working_crop(s, 64, 2.0) for s in samples]
    warped = warp_batch(collate(samples), A.expand(2, 3, 3), out_size=64)
    for i, c in enumerate(crops):
        for key in ("box", "landmarks_2d", "head_2d", "R", "t") + (("K",) if i == 0 else ("K_fallback",)):
            np.testing.assert_allclose(warped[key][i].numpy(), c[key], rtol=1e-5, atol=1e-3, err_msg=key)
    assert warped["has_K_fallback"].tolist() == [False, True] and "K_fallback" not in crops[0]


def test_det2_and_passing_a_known_scale():
    A = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, -2.0], [2.0, 0.0]]], dtype=D)
    torch.testing.assert_close(G.det2(A), torch.tensor([-2.0, 4.0], dtype=D))  # 1*4 - 2*3; quarter turn, s = 2
    S = torch.tensor([[[0.0, -2.0, 5.0], [2.0, 0.0, -1.0], [0.0, 0.0, 1.0]]], dtype=D)
    pts = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=D)
    want = torch.tensor([[[5.0 - 4.0, -1.0 + 2.0, 6.0]]], dtype=D)  # xy: (-2 y + 5, 2 x - 1); z x 2
    torch.testing.assert_close(G.apply_similarity_3d(S, pts), want)
    torch.testing.assert_close(G.apply_similarity_3d(S, pts, torch.tensor([2.0], dtype=D)), want)
    torch.testing.assert_close(G.similarity_camera(S, _K(10.0, 0.0, 0.0)[None], torch.tensor([2.0], dtype=D))[1],
                               G.similarity_camera(S, _K(10.0, 0.0, 0.0)[None])[1])
