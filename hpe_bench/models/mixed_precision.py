"""Layers kept in float32 under mixed precision, where the reduced-precision kernel is the slow one.

oneDNN's bfloat16 kernels for *strided* depthwise convolutions are several times slower than its float32
ones on CPU (forward + backward, batch 64, channels_last, 2 threads, Sapphire Rapids: 64 ch at 65 px 72 vs 31 ms,
512 ch at 9 px 31 vs 2 ms), while its stride-1 depthwise and all dense convolutions are faster in bfloat16.
OpNet's MobileNet trunk has four strided depthwise convolutions that took a quarter of its bf16 step; running
just those in float32 is the fastest mix (docs/performance.md, "Training speed"). Autocast offers no per-layer
dtype choice, hence this module.

The swap changes a module's class in place (``Float32Conv2d`` is an ``nn.Conv2d``), so parameter names,
checkpoints, ``load_state_dict`` and the ONNX export are unchanged; outside autocast it computes exactly what
``nn.Conv2d`` does.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    >>> float32_strided_depthwise(net)
    1
    >>> x = torch.randn(1, 8, 9, 9)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     y = net[0](x.bfloat16())
    >>> y.dtype, torch.allclose(y.float(), nn.functional.conv2d(x.bfloat16().float(), net[0].weight, net[0].bias,
    ...                                                         stride=2, padding=1, groups=8), rtol=1e-2, atol=1e-2)
    (torch.bfloat16, True)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Float32Conv2d", "float32_strided_depthwise", "is_strided_depthwise"]


class Float32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes in float32 under CPU autocast (input and weights as float32) and returns the
    input's dtype, so the layers after it (BatchNorm, ReLU) stay in bfloat16: casting back is cheaper than
    running them in float32 (the bf16 OpNet step: 2.48x float32's with the cast back, 2.33x without).
    Outside CPU autocast (float32 runs, ``bf16-true`` weights, GPUs, whose cuDNN kernels were not measured slow)
    it is exactly ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def is_strided_depthwise(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with one group per input channel and a stride above 1."""
    return (type(module) is nn.Conv2d and module.groups == module.in_channels > 1
            and max(module.stride) > 1)


def float32_strided_depthwise(net: nn.Module) -> int:
    """Make every strided depthwise ``nn.Conv2d`` of ``net`` a ``Float32Conv2d`` (in place); returns how many."""
    count = 0
    for module in net.modules():
        if is_strided_depthwise(module):
            module.__class__ = Float32Conv2d
            count += 1
    return count
