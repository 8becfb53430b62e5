"""int8 accuracy report (hpe_bench.deploy.quantize.compare_predictions): known rotations, known answers."""
import math

import numpy as np
import pytest
import torch

from hpe_bench.deploy.quantize import compare_predictions


def rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], np.float32)


def test_int8_vs_fp32_and_each_vs_ground_truth():
    """fp32 predicts 10 deg about z, int8 12 deg, the labels are the identity (one sample unlabelled, 90 deg off,
    which must not count against the labels): 2 deg apart, 10 and 12 deg from the truth."""
    fp32 = [{"R": np.stack([rot_z(10), rot_z(10), rot_z(90)]), "t": np.zeros((3, 3), np.float32)}]
    int8 = [{"R": np.stack([rot_z(12), rot_z(12), rot_z(92)]), "t": np.full((3, 3), 0.001, np.float32)}]
    labels = [{"R": torch.eye(3, dtype=torch.float64).expand(3, 3, 3), "has_R": torch.tensor([True, True, False])}]
    out = compare_predictions(fp32, int8, {"R": "R", "t": "t"}, "trg", labels)
    assert out["num_samples"] == 3 and out["num_labelled"] == 2
    assert out["geodesic_deg"] == pytest.approx(2.0, abs=1e-3)
    assert out["fp32_vs_gt"]["geodesic_deg"] == pytest.approx(10.0, abs=1e-3)
    assert out["int8_vs_gt"]["geodesic_deg"] == pytest.approx(12.0, abs=1e-3)
    # a pure roll: the Euler MAE is the angle over 3 axes
    assert out["int8_vs_gt"]["mae_r_deg"] == pytest.approx(12.0 / 3, abs=1e-3)
    assert out["t_diff_mm"] == pytest.approx(math.sqrt(3) * 1.0, rel=1e-4)
    no_labels = compare_predictions(fp32, int8, {"R": "R"}, "trg")
    assert "fp32_vs_gt" not in no_labels and no_labels["geodesic_deg"] == pytest.approx(2.0, abs=1e-3)
