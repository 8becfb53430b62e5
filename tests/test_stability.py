"""Stability metrics against hand-computed sequences (the benchmark's rendering run is in test_predict.py)."""
import math

import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.stability import SEQUENCES, stability_metrics, trajectory


def rot(axis, deg):
    return G.axis_rotation(axis, torch.as_tensor(math.radians(deg), dtype=torch.float64))


def yaw_ramp(n, step_deg=1.0):
    return torch.stack([rot("y", step_deg * k) for k in range(n)])


def test_constant_bias_is_inaccurate_but_does_not_jitter():
    R = yaw_ramp(20)
    m = stability_metrics(rot("x", 10.0) @ R, R)
    assert m["accuracy_deg"] == pytest.approx(10.0, abs=1e-9)
    assert m["jitter_deg"] == pytest.approx(0.0, abs=1e-6)


def test_delayed_prediction_has_the_delay_as_lag():
    R = yaw_ramp(30)
    P = torch.cat([R[:1], R[:1], R[:-2]])  # P_k = R_{k-2} (first two frames held)
    m = stability_metrics(P, R, max_lag=5)
    assert m["lag_frames"] == 2
    # frame 0 exact, frame 1 one degree off, the 28 others two degrees
    assert m["accuracy_deg"] == pytest.approx((1.0 * 1 + 2.0 * 28) / 30, abs=1e-9)


def test_alternating_noise_on_a_static_head_is_pure_jitter():
    R = rot("y", 20.0).expand(10, 3, 3)
    P = torch.stack([rot("x", 1.0 if k % 2 else -1.0) @ R[k] for k in range(10)])
    m = stability_metrics(P, R, moving=False)
    assert m["accuracy_deg"] == pytest.approx(1.0, abs=1e-9)
    assert m["jitter_deg"] == pytest.approx(2.0, abs=1e-9)
    assert math.isnan(m["lag_frames"])


def test_trajectories_follow_their_definition():
    fps = 30.0
    static = trajectory("static", 5, fps)
    torch.testing.assert_close(static, static[:1].expand(5, 3, 3))
    fast = trajectory("fast", 16, fps)
    yaw = G.matrix_to_euler(fast, "trg")[:, 0]
    a_yaw, _, hz = SEQUENCES["fast"]
    expected = a_yaw * torch.sin(2 * math.pi * hz * torch.arange(16, dtype=torch.float64) / fps)
    torch.testing.assert_close(yaw, expected, atol=1e-9, rtol=0)
