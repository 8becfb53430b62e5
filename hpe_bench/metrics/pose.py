"""Pose metrics: rotation (geodesic + per-axis Euler under a named rule), translation, ADD."""
from __future__ import annotations

from typing import Any, Mapping

from ..geometry import check_rule
from .base import SumCountMetric
from .per_sample import Errors, add_errors, rotation_errors, translation_errors

__all__ = ["RotationMetrics", "TranslationMetrics", "ADDMetric"]


class RotationMetrics(SumCountMetric):
    """Mean geodesic error and per-axis |Euler errors|, degrees, over samples with ``has_R`` and ``pred["R"]``.

    Output: ``geodesic_deg, mae_r_deg, yaw_deg, pitch_deg, roll_deg, count_rotation``.
    ``euler_rule``: "opnet" or "trg" (see ``geometry.euler``); anything else raises ``ValueError``.
    """

    keys = ("geodesic_deg", "mae_r_deg", "yaw_deg", "pitch_deg", "roll_deg")
    count_name = "count_rotation"

    def __init__(self, euler_rule: str = "trg", **kwargs: Any) -> None:
        self.euler_rule = check_rule(euler_rule)
        super().__init__(**kwargs)

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return rotation_errors(pred, batch, self.euler_rule)


class TranslationMetrics(SumCountMetric):
    """Mean |dx|, |dy|, |dz| (mm) and their mean, over samples with ``has_t`` and ``pred["t"]``.

    Output: ``tx_mm, ty_mm, tz_mm, mae_t_mm, count_translation``.
    """

    keys = ("tx_mm", "ty_mm", "tz_mm", "mae_t_mm")
    count_name = "count_translation"

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return translation_errors(pred, batch)


class ADDMetric(SumCountMetric):
    """Mean ADD (mm) over samples with ``has_R``, ``has_t``, ``has_vertices`` and ``pred["R"]``, ``pred["t"]``.

    Output: ``add_mm, count_add``.
    """

    keys = ("add_mm",)
    count_name = "count_add"

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return add_errors(pred, batch)
