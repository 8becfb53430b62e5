"""Transposed convolutions re-expressed as a convolution followed by a pixel shuffle (sub-pixel convolution),
for deployment graphs.

A ``ConvTranspose2d`` with stride ``s`` whose output is exactly ``s`` times its input (``k - 2p + output_padding
== s``, e.g. TRG's k4/s2/p1 deconvolutions) computes each of the ``s x s`` output phases as an ordinary
convolution of the input with a sub-kernel. Stacking the phases as ``s*s`` times the output channels gives one
``Conv2d`` and a ``pixel_shuffle`` (ONNX ``DepthToSpace``, CRD order): the same numbers up to float rounding
(Shi et al. 2016, "Is the deconvolution layer the same as a convolutional layer?").

Why: ONNX Runtime's CPU provider has no int8 ``ConvTranspose`` kernel, so an int8 graph has to keep TRG's three
deconvolutions in float32 (35 % of its int8 latency); as ``Conv`` they are quantised like the rest of the
trunk. A ``BatchNorm2d`` right after the deconvolution is folded into the convolution (eval statistics), since
``DepthToSpace`` between them would stop ONNX Runtime's Conv+BN fusion. Written here because neither torch nor
ONNX Runtime offers this rewrite.

    >>> import torch
    >>> deconv = torch.nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1).eval()
    >>> x = torch.randn(2, 4, 5, 6)
    >>> torch.allclose(SubPixelConv(deconv)(x), deconv(x), atol=1e-5)
    True
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SubPixelConv", "subpixel_deconvs", "can_rewrite"]


def can_rewrite(deconv: nn.ConvTranspose2d) -> bool:
    """Whether ``deconv`` has an exact sub-pixel form: equal strides ``s``, output ``s`` times the input
    (``k - 2p + output_padding == s`` per axis), no dilation, one group, zero padding mode."""
    s = deconv.stride
    return (s[0] == s[1] and deconv.groups == 1 and tuple(deconv.dilation) == (1, 1) and deconv.padding_mode == "zeros"
            and all(k - 2 * p + op == st for k, p, op, st in
                    zip(deconv.kernel_size, deconv.padding, deconv.output_padding, s)))


def _taps(k: int, p: int, s: int) -> tuple[int, int]:
    """Smallest and largest input offset ``d`` (input index minus output block index) any phase reads:
    output ``s*i + a`` takes input ``i + d`` with deconvolution tap ``a + p - s*d`` in ``[0, k)``."""
    lo = min(math.ceil((a + p - k + 1) / s) for a in range(s))
    hi = max(math.floor((a + p) / s) for a in range(s))
    return lo, hi


class SubPixelConv(nn.Module):
    """``Conv2d`` (``s*s*C_out`` channels) + ``pixel_shuffle(s)`` equal to ``deconv`` (and to ``bn(deconv(x))``
    when an eval-mode ``bn`` is given). Input ``(B, C_in, H, W)`` -> ``(B, C_out, s*H, s*W)``. The weights are
    copied at construction (a deployment-time rewrite of a trained net, not a trainable layer)."""

    def __init__(self, deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        if not can_rewrite(deconv):
            raise ValueError(f"{deconv} has no exact sub-pixel form (needs equal strides s, k - 2p + output_padding"
                             " == s, dilation 1, groups 1)")
        s, (kh, kw), (ph, pw) = deconv.stride[0], deconv.kernel_size, deconv.padding
        (ly, hy), (lx, hx) = _taps(kh, ph, s), _taps(kw, pw, s)
        Wt = deconv.weight.detach()  # (C_in, C_out, kh, kw)
        c_in, c_out = Wt.shape[:2]
        W = Wt.new_zeros(c_out, s, s, c_in, hy - ly + 1, hx - lx + 1)
        for a in range(s):
            for u, dy in enumerate(range(ly, hy + 1)):
                ky = a + ph - s * dy
                if not 0 <= ky < kh:
                    continue
                for b in range(s):
                    for v, dx in enumerate(range(lx, hx + 1)):
                        kx = b + pw - s * dx
                        if 0 <= kx < kw:
                            W[:, a, b, :, u, v] = Wt[:, :, ky, kx].T
        bias = deconv.bias.detach() if deconv.bias is not None else Wt.new_zeros(c_out)
        if bn is not None:  # eval BN: y = g (x - m) / sqrt(v + eps) + beta, per output channel
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            W = W * scale.view(-1, 1, 1, 1, 1, 1)
            bias = (bias - bn.running_mean) * scale + bn.bias.detach()
        # pixel_shuffle's channel order: c * s*s + a * s + b -> channel c, row phase a, column phase b
        self.weight = nn.Parameter(W.reshape(c_out * s * s, c_in, *W.shape[-2:]).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.repeat_interleave(s * s).contiguous(), requires_grad=False)
        self.scale = s
        self.pads = (-lx, hx, -ly, hy)  # F.pad order: left, right, top, bottom (negative crops)

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.pads
        if left == right and top == bottom and left >= 0 and top >= 0:
            y = F.conv2d(x, self.weight, self.bias, padding=(top, left))
        else:
            y = F.conv2d(F.pad(x, self.pads), self.weight, self.bias)
        return F.pixel_shuffle(y, self.scale)


def subpixel_deconvs(net: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``net`` (eval mode) with every rewritable ``ConvTranspose2d`` replaced by ``SubPixelConv``;
    a ``BatchNorm2d`` that directly follows one inside an ``nn.Sequential`` is folded into it (and replaced by
    ``Identity``). Returns ``(copy, number of rewritten layers)``; ``net`` itself is untouched."""
    net = copy.deepcopy(net).eval()
    count = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, layer), (next_name, after) in zip(children, children[1:] + [(None, None)]):
                if isinstance(layer, nn.ConvTranspose2d) and can_rewrite(layer):
                    fold = after if isinstance(after, nn.BatchNorm2d) and after.track_running_stats else None
                    setattr(module, name, SubPixelConv(layer, fold))
                    if fold is not None:
                        setattr(module, next_name, nn.Identity())
                    count += 1
    for parent in list(net.modules()):  # deconvolutions outside a Sequential: no BN folding
        for name, layer in list(parent.named_children()):
            if isinstance(layer, nn.ConvTranspose2d) and can_rewrite(layer):
                setattr(parent, name, SubPixelConv(layer))
                count += 1
    return net, count
