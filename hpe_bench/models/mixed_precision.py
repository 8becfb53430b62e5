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

import functools
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["Float32Conv2d", "float32_strided_depthwise", "is_strided_depthwise", "autocast_off", "to_float32",
           "full_precision"]


def to_float32(x: Any) -> Any:
    """Floating tensors of ``x`` (a tensor or nested dicts / lists / tuples) in float32; float64 and integer
    tensors and everything else unchanged."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() and x.dtype != torch.float64 else x
    if isinstance(x, Mapping):
        return {k: to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float32(v) for v in x)
    return x


def autocast_off(x: Tensor):
    """A context without autocast on ``x``'s device: what runs inside computes in its inputs' dtypes.

    Heads' last layers and output geometry (6D / quaternion -> matrix, the ray frame, box-correction
    translation, landmark decoding) run inside it with float32 inputs, so a net trained under mixed precision
    still outputs proper rotations: casting a bfloat16 matrix to float32 afterwards does not make it
    orthonormal again (bf16 keeps 8 bits: |R^T R - I| up to ~0.03).
    """
    return torch.autocast(x.device.type, enabled=False)


def full_precision(fn: Callable) -> Callable:
    """Decorator: run ``fn`` outside autocast with its floating tensor arguments (also inside dicts, lists and
    tuples) in float32, when autocast is on for their device; otherwise call it unchanged.

    ``torch.amp.custom_fwd(cast_inputs=...)`` does the same for one fixed device type and is meant for
    ``autograd.Function``; models here run on CPU and GPU alike, hence this small version.

    >>> @full_precision
    ... def gram(a):
    ...     return a @ a.transpose(-1, -2)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     gram(torch.eye(3)).dtype
    torch.float32
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)), None)
        if first is None:
            first = next((v for a in list(args) + list(kwargs.values()) if isinstance(a, Mapping)
                          for v in a.values() if torch.is_tensor(v)), None)
        device = first.device.type if first is not None else "cpu"
        if not torch.is_autocast_enabled(device):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*to_float32(args), **to_float32(kwargs))
    return wrapper


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
