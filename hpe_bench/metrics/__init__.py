"""Evaluation metrics of hpe_bench (see docs/metrics.md).

- ``per_sample``: pure functions giving per-sample errors ``(B,)`` (NaN where not evaluated); the single
  definition used by the per-sample predictions table and by every aggregate below.
- torchmetrics ``Metric`` subclasses, each with ``update(pred, batch)`` and ``compute() -> dict[str, Tensor]``,
  averaging only over the samples that have its labels and reporting its own count.
- ``build_metrics(euler_rule)`` -> ``MetricCollection`` of all of them; ``compute_flat`` -> one flat dict.
"""
from __future__ import annotations

from typing import Union

import torch
from torchmetrics import Metric, MetricCollection

from ..geometry import check_rule
from .dense import Dense3DMetric, FaceSizeMetric
from .landmarks import YAW_BINS, NME2DMetric
from .per_sample import PER_SAMPLE_KEYS, mesh_area, per_sample_errors
from .pose import ADDMetric, RotationMetrics, TranslationMetrics

__all__ = [
    "RotationMetrics", "TranslationMetrics", "ADDMetric", "NME2DMetric", "Dense3DMetric", "FaceSizeMetric",
    "build_metrics", "compute_flat", "per_sample_errors", "PER_SAMPLE_KEYS", "METRIC_KEYS", "YAW_BINS", "mesh_area",
]

METRIC_KEYS = (
    "geodesic_deg", "mae_r_deg", "yaw_deg", "pitch_deg", "roll_deg", "count_rotation",
    "tx_mm", "ty_mm", "tz_mm", "mae_t_mm", "count_translation",
    "add_mm", "count_add",
    "nme2d", "count_nme2d",
    *(f"nme2d_{name}" for name, *_ in YAW_BINS), *(f"count_nme2d_{name}" for name, *_ in YAW_BINS),
    "dense_mean_mm", "dense_median_mm", "count_dense",
    "face_size_mm2", "count_face_size",
)
"""Every key ``compute_flat(build_metrics())`` returns."""


def build_metrics(euler_rule: str = "trg") -> MetricCollection:
    """All evaluation metrics in one ``MetricCollection``; ``update(pred, batch)`` feeds them all.

    ``compute()`` flattens the metrics' dict outputs into one dict with the unprefixed keys of ``METRIC_KEYS``
    (torchmetrics 1.9 only prefixes inner keys when two metrics return the same key, which none do).
    Compute groups are disabled: they share states between metrics whose states look equal after the
    first update, which is wrong for metrics that select different samples.
    """
    check_rule(euler_rule)
    return MetricCollection(
        {
            "rotation": RotationMetrics(euler_rule),
            "translation": TranslationMetrics(),
            "add": ADDMetric(),
            "nme2d": NME2DMetric(euler_rule),
            "dense": Dense3DMetric(),
            "face_size": FaceSizeMetric(),
        },
        compute_groups=False,
    )


def compute_flat(metrics: Union[MetricCollection, Metric]) -> dict[str, Union[float, int]]:
    """``compute()`` of a collection (or one metric) as ``{key: float | int}``: counts as ``int``, values as
    ``float`` (NaN where the count is 0)."""
    raw = metrics.compute()
    # the order of METRIC_KEYS first (MetricCollection sorts by metric name), then any other key
    order = [k for k in METRIC_KEYS if k in raw] + [k for k in raw if k not in METRIC_KEYS]
    out: dict[str, Union[float, int]] = {}
    for key in order:
        value = torch.as_tensor(raw[key])
        out[key] = float(value) if value.is_floating_point() else int(value)
    return out
