"""Masked reductions shared by the loss recipes."""
from __future__ import annotations

from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-sample ``values (B,)`` over samples where ``mask (B,)`` is true; 0 (with gradient
    path intact) when no sample has the label, so a batch without it contributes nothing."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def masked_batch_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over labelled samples divided by the whole batch size (OpNet's convention, which keeps the
    effective weight of a term proportional to how often its label occurs in the mix)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / max(values.shape[0], 1)
