"""Shared machinery of the aggregate metrics: float64 sums and int64 counts reduced by ``"sum"``.

Sum/count states (never running means) make merging across processes (``dist_reduce_fx="sum"``) and
``merge_state`` exact: the merged count is the number of evaluated samples, whatever the split.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from torchmetrics import Metric

from .per_sample import Errors

__all__ = ["SumCountMetric", "mean_or_nan"]


def mean_or_nan(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` as float64, NaN when ``count == 0``."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


class SumCountMetric(Metric):
    """Mean of per-sample errors over the samples a ``per_sample`` function marks valid.

    Subclasses set ``keys`` (error names, also the output names), ``count_name`` and implement ``errors``.
    ``compute()`` returns ``{key: mean (float64 scalar, NaN if no sample)} | {count_name: int64 scalar}``.
    """

    full_state_update = False  # merge_state and the cheap forward path need this
    higher_is_better = False
    is_differentiable = False
    keys: tuple[str, ...] = ()
    count_name: str = "count"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for k in self.keys:
            self.add_state(f"sum_{k}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        raise NotImplementedError

    def update(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Accumulate one batch: ``pred`` is the model's output dict, ``batch`` a collated batch."""
        self._add(*self.errors(pred, batch))

    def _add(self, values: dict[str, Tensor], valid: Tensor) -> None:
        valid = valid.to(self.count.device)
        self.count += valid.sum()
        for k in self.keys:
            # a NaN prediction on a valid sample propagates to the mean on purpose (no silent drop)
            total = getattr(self, f"sum_{k}")
            setattr(self, f"sum_{k}", total + values[k].to(total.device)[valid].sum())

    def compute(self) -> dict[str, Tensor]:
        out = {k: mean_or_nan(getattr(self, f"sum_{k}"), self.count) for k in self.keys}
        out[self.count_name] = self.count.clone()
        return out
