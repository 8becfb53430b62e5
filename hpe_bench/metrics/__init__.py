"""Evaluation metrics of hpe_bench (see docs/metrics.md).

- ``per_sample``: pure functions giving per-sample errors ``(B,)`` (NaN where not evaluated); the single
  definition used by the per-sample predictions table and by every aggregate below.
- torchmetrics ``Metric`` subclasses, each with ``update(pred, batch)`` and ``compute() -> dict[str, Tensor]``,
  averaging only over the samples that have its labels and reporting its own count.
- ``registry``: the one list of metric keys (``METRICS``: unit, labels needed, direction, digits, producing
  class); ``build_metrics(euler_rule)`` -> ``MetricCollection`` of every registered class; ``compute_flat`` ->
  one flat dict in registry order.
"""
from __future__ import annotations

import inspect
from typing import Union

import torch
from torchmetrics import Metric, MetricCollection

from ..geometry import check_rule
from .dense import Dense3DMetric, FaceSizeMetric
from .landmarks import YAW_BINS, NME2DMetric
from .per_sample import PER_SAMPLE_KEYS, mesh_area, per_sample_errors
from .pose import ADDMetric, RotationMetrics, TranslationMetrics
from .registry import METRICS, MetricSpec, computed_keys, metric_classes, register_metric

__all__ = [
    "RotationMetrics", "TranslationMetrics", "ADDMetric", "NME2DMetric", "Dense3DMetric", "FaceSizeMetric",
    "build_metrics", "compute_flat", "per_sample_errors", "PER_SAMPLE_KEYS", "YAW_BINS", "mesh_area",
    "METRICS", "MetricSpec", "register_metric", "computed_keys",
]


def build_metrics(euler_rule: str = "trg") -> MetricCollection:
    """All evaluation metrics in one ``MetricCollection``; ``update(pred, batch)`` feeds them all.

    One instance of every ``Metric`` class in ``registry.METRICS`` (in registry order). ``compute()`` flattens
    their dict outputs into one dict with the unprefixed keys of ``registry.computed_keys()``
    (torchmetrics 1.9 only prefixes inner keys when two metrics return the same key, which none do).
    Compute groups are disabled: they share states between metrics whose states look equal after the
    first update, which is wrong for metrics that select different samples.
    """
    check_rule(euler_rule)
    return MetricCollection({_collection_name(cls): _build(cls, euler_rule) for cls in metric_classes()},
                            compute_groups=False)


def _collection_name(cls) -> str:
    """``rotation`` for ``count_rotation``: the name a metric has in the collection (``collection["rotation"]``)."""
    count = getattr(cls, "count_name", None)
    return count.removeprefix("count_") if count else getattr(cls, "__name__", str(cls)).lower()


def _build(cls, euler_rule: str) -> Metric:
    params = inspect.signature(cls).parameters
    return cls(euler_rule=euler_rule) if "euler_rule" in params else cls()


def compute_flat(metrics: Union[MetricCollection, Metric]) -> dict[str, Union[float, int]]:
    """``compute()`` of a collection (or one metric) as ``{key: float | int}``: counts as ``int``, values as
    ``float`` (NaN where the count is 0)."""
    raw = metrics.compute()
    # registry order first (MetricCollection sorts by metric name), then any other key
    order = [k for k in METRICS if k in raw] + [k for k in raw if k not in METRICS]
    out: dict[str, Union[float, int]] = {}
    for key in order:
        value = torch.as_tensor(raw[key])
        is_count = METRICS[key].is_count if key in METRICS else not value.is_floating_point()
        out[key] = int(value) if is_count else float(value)
    return out
