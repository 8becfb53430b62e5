"""One Euro filter: hand-computed steps, rotations stay rotations, jitter goes down, frames do not matter."""
import math

import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.smoothing import (OneEuroFilter, OneEuroParams, OneEuroPoseFilter, OneEuroRotationFilter,
                                 smooth_rotations, smoothing_factor)

# cut-off 1 / (2 pi) Hz -> tau = 1 s; with dt = 1 s, alpha = 1 / (1 + 1) = 0.5 (beta = 0: no speed term)
HALF = OneEuroParams(min_cutoff=1.0 / (2.0 * math.pi), beta=0.0, d_cutoff=1.0)


def test_smoothing_factor_by_hand():
    assert float(smoothing_factor(1.0 / (2 * math.pi), 1.0)) == pytest.approx(0.5)
    assert float(smoothing_factor(1.0 / (2 * math.pi), 3.0)) == pytest.approx(0.75)  # 1 / (1 + 1/3)
    with pytest.raises(ValueError):
        smoothing_factor(1.0, 0.0)


def test_vector_filter_first_steps_by_hand():
    f = OneEuroFilter(HALF)
    assert f(torch.tensor([0.0, 2.0]), 1.0).tolist() == [0.0, 2.0]  # first sample passes through
    assert f(torch.tensor([10.0, 2.0]), 1.0).tolist() == pytest.approx([5.0, 2.0])
    assert f(torch.tensor([10.0, 2.0]), 1.0).tolist() == pytest.approx([7.5, 2.0])


def test_rotation_filter_moves_half_way_along_the_geodesic():
    f = OneEuroRotationFilter(HALF)
    f(torch.eye(3, dtype=torch.float64), 1.0)
    R = f(G.axis_rotation("z", torch.tensor(math.radians(10.0), dtype=torch.float64)), 1.0)
    expected = G.axis_rotation("z", torch.tensor(math.radians(5.0), dtype=torch.float64))
    torch.testing.assert_close(R, expected, atol=1e-10, rtol=0)


def test_constant_rotation_stays_constant_and_near_pi_is_fine():
    R0 = G.rotvec_to_matrix(torch.tensor([0.0, 3.1, 0.0], dtype=torch.float64))  # 177.6 deg: no sign trouble
    out = smooth_rotations(R0.expand(5, 3, 3), dt=1 / 30)
    torch.testing.assert_close(out, R0.expand(5, 3, 3), atol=1e-9, rtol=0)


def test_jitter_is_reduced_and_outputs_are_rotations():
    gen = torch.Generator().manual_seed(0)
    base = G.axis_rotation("y", torch.tensor(0.4, dtype=torch.float64))
    noise = 0.05 * torch.randn(60, 3, generator=gen, dtype=torch.float64)  # ~3 deg jitter around a fixed pose
    raw = base @ G.rotvec_to_matrix(noise)
    smooth = smooth_rotations(raw, dt=1 / 30, params=OneEuroParams(min_cutoff=0.5, beta=0.0))
    err_raw = G.geodesic_angle(raw[10:], base.expand(50, 3, 3)).mean()
    err_smooth = G.geodesic_angle(smooth[10:], base.expand(50, 3, 3)).mean()
    assert err_smooth < 0.5 * err_raw
    eye = torch.eye(3, dtype=torch.float64).expand(60, 3, 3)
    torch.testing.assert_close(smooth.transpose(-1, -2) @ smooth, eye, atol=1e-9, rtol=0)
    assert torch.allclose(torch.det(smooth), torch.ones(60, dtype=torch.float64))


def test_filter_commutes_with_a_change_of_camera_frame():
    """Smoothing Q R_k equals Q times smoothing R_k: nothing depends on the camera axes."""
    gen = torch.Generator().manual_seed(1)
    raw = G.rotvec_to_matrix(0.3 * torch.randn(20, 3, generator=gen, dtype=torch.float64))
    Q = G.rotvec_to_matrix(torch.tensor([0.2, -1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(smooth_rotations(Q @ raw, 0.1), Q @ smooth_rotations(raw, 0.1), atol=1e-9, rtol=0)


def test_pose_filter_skips_missing_translation():
    f = OneEuroPoseFilter(HALF, HALF)
    R, t = f(torch.eye(3), None, 1.0)
    assert t is None
    f(torch.eye(3), torch.tensor([0.0, 0.0, 1.0]), 1.0)
    _, t = f(torch.eye(3), torch.tensor([0.0, 0.0, 2.0]), 1.0)
    assert t.tolist() == pytest.approx([0.0, 0.0, 1.5])
