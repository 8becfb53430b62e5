"""Initialisation as the authors' code: OpNet convolutions He-normal fan-out, TRG head biases PyTorch's default.

Expected statistics come from the formulas (He: std = sqrt(2 / fan_out), fan_out = out_channels x k_h x k_w;
PyTorch's Linear bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))), not from the code under test; draws are seeded.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpe_bench.models.opnet import OpNet
from hpe_bench.models.trg_parts import FaceRegressor


def _he_std(w: torch.Tensor) -> float:
    return math.sqrt(2.0 / (w.shape[0] * w[0, 0].numel()))


def test_opnet_mobilenet_convs_are_he_normal_fan_out():
    torch.manual_seed(0)
    convs = [m for m in OpNet(backbone="mobilenetv1").backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 13  # stem + (depthwise, pointwise) x 13
    for conv in convs:
        w = conv.weight.detach().double()
        rel = 4.0 / math.sqrt(2 * w.numel())  # 4 standard errors of a sample std
        assert w.std().item() == pytest.approx(_he_std(w), rel=max(rel, 0.02)), tuple(w.shape)
        assert abs(w.mean().item()) < 4 * _he_std(w) / math.sqrt(w.numel())
    depthwise = [c.weight for c in convs if c.groups > 1]
    # 3x3 depthwise: sqrt(2 / (9 C)) = 0.083 (C = 32) ... 0.0147 (C = 1024); PyTorch's default would be 0.19
    assert depthwise[0].std().item() == pytest.approx(0.0833, rel=0.25)
    assert depthwise[-1].std().item() == pytest.approx(0.0147, rel=0.05)
    # normal, not uniform: a 1M-value draw has values beyond sqrt(3) std (a uniform's bound)
    w = convs[-1].weight.detach()
    assert w.abs().max().item() > 3.0 * _he_std(w)


def test_opnet_resnet18_conv1_is_he_normal_fan_out():
    torch.manual_seed(0)
    conv1 = OpNet(backbone="resnet18").backbone.conv1
    w = conv1.weight.detach().double()
    assert tuple(w.shape) == (64, 1, 7, 7)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 49)), rel=0.05)  # 0.0253; default: 0.082
    assert w.abs().max().item() > 3.0 * math.sqrt(2.0 / (64 * 49))


def test_trg_head_biases_keep_pytorch_default():
    torch.manual_seed(0)
    reg = FaceRegressor(64, n_vertices=1220, hidden=1024, dropout=0.0)
    bound = 1.0 / math.sqrt(1024)
    b = reg.vertex_head.bias.detach().double()  # 3660 draws of U(-1/32, 1/32)
    assert b.abs().max().item() <= bound
    assert b.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
    assert reg.pose_head.bias.detach().abs().max().item() <= bound
    assert reg.pose_head.bias.detach().abs().min().item() > 0.0  # drawn, not zeroed
    # head weights stay small (xavier, gain 0.01): the first residuals are near zero
    w = reg.vertex_head.weight.detach().double()
    assert w.abs().max().item() <= 0.01 * math.sqrt(6.0 / (1024 + 3660)) + 1e-12


def test_trg_correction_offsets_start_as_the_authors():
    """The project's box offsets dx, dy are half the authors' (checkpoint README). The pose head keeps the authors'
    entries, drawn as theirs (PyTorch's default, no row halved), and a fixed output scale of 1/2 on dx, dy gives
    the initial function the authors' distribution of offsets in the project's units (issue 19)."""
    from hpe_bench.models.trg import TRG

    torch.manual_seed(0)
    net = TRG(backbone="resnet10t", hidden=256, channels=32, grid_size=6)
    bound = 1.0 / math.sqrt(256)
    b = torch.stack([reg.pose_head.bias.detach() for reg in net.regressors])
    assert b.abs().max().item() <= bound
    assert b[:, 7:9].abs().max().item() > 0.5 * bound  # 6 draws of U(-1/16, 1/16), not halved ones
    for reg in net.regressors:
        assert reg.pose_head.out_scale.tolist() == [1.0] * 7 + [0.5, 0.5]
