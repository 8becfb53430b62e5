"""NME-2D (AFLW2000-3D rule), overall and binned by |GT yaw|."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ..geometry import check_rule, matrix_to_euler
from .base import SumCountMetric, mean_or_nan
from .per_sample import Errors, nme2d_errors

__all__ = ["NME2DMetric", "YAW_BINS"]

# (name, low, high, high inclusive): [0, 30), [30, 60), [60, 90] in degrees of |GT yaw|
YAW_BINS = (("yaw_0_30", 0.0, 30.0, False), ("yaw_30_60", 30.0, 60.0, False), ("yaw_60_90", 60.0, 90.0, True))


class NME2DMetric(SumCountMetric):
    """Mean NME-2D as a **fraction** (not percent) over samples with ``has_landmarks_2d`` and a prediction.

    Output: ``nme2d, count_nme2d`` and, for each |GT yaw| bin [0, 30), [30, 60), [60, 90] (yaw of the GT ``R``
    under ``euler_rule``), ``nme2d_yaw_<lo>_<hi>`` and ``count_nme2d_yaw_<lo>_<hi>``. Samples without a GT ``R``
    enter only the overall value; |yaw| > 90 enters no bin but stays in the overall value.
    """

    keys = ("nme2d",)
    count_name = "count_nme2d"

    def __init__(self, euler_rule: str = "trg", **kwargs: Any) -> None:
        self.euler_rule = check_rule(euler_rule)
        super().__init__(**kwargs)
        for name, *_ in YAW_BINS:
            self.add_state(f"sum_{name}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"count_{name}", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return nme2d_errors(pred, batch)

    def update(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        values, valid = self.errors(pred, batch)
        self._add(values, valid)
        dev = self.count.device
        nme, valid = values["nme2d"].to(dev), valid.to(dev)
        has_r = batch["has_R"].to(device=dev, dtype=torch.bool)
        yaw = matrix_to_euler(batch["R"].detach().to(device=dev, dtype=torch.float64), self.euler_rule)[:, 0].abs()
        for name, lo, hi, closed in YAW_BINS:
            in_bin = valid & has_r & (yaw >= lo) & ((yaw <= hi) if closed else (yaw < hi))
            setattr(self, f"sum_{name}", getattr(self, f"sum_{name}") + nme[in_bin].sum())
            setattr(self, f"count_{name}", getattr(self, f"count_{name}") + in_bin.sum())

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        for name, *_ in YAW_BINS:
            count = getattr(self, f"count_{name}")
            out[f"nme2d_{name}"] = mean_or_nan(getattr(self, f"sum_{name}"), count)
            out[f"count_nme2d_{name}"] = count.clone()
        return out
