"""The one list of evaluation metrics: every key ``metrics.json`` can hold, in its order (docs/metrics.md).

Each key has a ``MetricSpec`` (unit, GT labels it needs, direction, digits, its count key) and, for computed
keys, the torchmetrics ``Metric`` class that produces it. Everything else reads this registry:

- ``build_metrics`` builds one instance of every registered ``Metric`` class (``metrics/__init__.py``);
- ``compute_flat`` and so metrics.json order their keys by it;
- the table printed after a run (``run.format_table``), ``make table`` (``table.METRICS``) and the
  validation logger (``val/<key>``) list and format keys from it.

Adding a metric is one ``register_metric`` call per key it outputs, next to its ``Metric`` class; nothing
else is edited. Counts (``count_*``, ``num_samples``) have unit ``COUNT_UNIT`` and are integers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torchmetrics import Metric

from .dense import Dense3DMetric, FaceSizeMetric
from .landmarks import YAW_BINS, NME2DMetric
from .pose import ADDMetric, RotationMetrics, TranslationMetrics

__all__ = ["MetricSpec", "METRICS", "COUNT_UNIT", "NUM_SAMPLES", "register_metric", "metric_classes",
           "computed_keys", "format_value"]

COUNT_UNIT = "samples"
NUM_SAMPLES = "num_samples"  # test samples evaluated; counted by the module, not by a Metric


@dataclass(frozen=True)
class MetricSpec:
    """One key of metrics.json.

    name: the key (``compute()`` output name of its Metric); unit: "deg", "mm", "mm2", "fraction", or
    ``COUNT_UNIT`` for counts; needs: the GT label fields (``batch["has_<field>"]``) a sample must have;
    lower_is_better: the direction a table marks; digits: decimals printed (0 for counts); count: the key of
    the count this mean is over (None for counts); description: one line for docs and tables.
    metric: the torchmetrics ``Metric`` class (or factory) whose ``compute()`` returns this key, None for keys
    filled elsewhere (``num_samples``). A factory taking ``euler_rule`` receives it.
    """

    name: str
    unit: str
    needs: tuple[str, ...]
    lower_is_better: bool = True
    digits: int = 2
    count: Optional[str] = None
    description: str = ""
    metric: Optional[Callable[..., Metric]] = field(default=None, compare=False, repr=False)

    @property
    def is_count(self) -> bool:
        return self.unit == COUNT_UNIT


METRICS: dict[str, MetricSpec] = {}
"""name -> spec, in metrics.json order. Mutated only by ``register_metric``."""


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` at the end of ``METRICS`` (metrics.json order); ``ValueError`` if its name is taken.

    A value's ``count`` key is registered too, usually right after the values it counts.
    """
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRICS[spec.name] = spec
    return spec


def metric_classes() -> list[Callable[..., Metric]]:
    """The distinct ``Metric`` classes of the registry, in registry order (one instance each in a collection)."""
    seen: list[Callable[..., Metric]] = []
    for spec in METRICS.values():
        if spec.metric is not None and spec.metric not in seen:
            seen.append(spec.metric)
    return seen


def computed_keys() -> tuple[str, ...]:
    """Every key ``compute_flat(build_metrics())`` returns (the registry minus keys filled elsewhere)."""
    return tuple(name for name, spec in METRICS.items() if spec.metric is not None)


def format_value(name: str, value: Any) -> str:
    """``value`` printed with its key's digits; counts as integers; unknown keys with 3 decimals."""
    spec = METRICS.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if spec is not None and spec.is_count:
        return str(int(round(float(value))))
    return f"{float(value):.{spec.digits if spec is not None else 3}f}"


def _count(name: str, description: str, metric: Optional[Callable[..., Metric]]) -> None:
    register_metric(MetricSpec(name, COUNT_UNIT, (), lower_is_better=False, digits=0, description=description,
                               metric=metric))


def _register_builtin() -> None:
    rot, R = RotationMetrics, ("R",)
    register_metric(MetricSpec("geodesic_deg", "deg", R, count="count_rotation", metric=rot,
                               description="angle of R_gt^T R_pred"))
    register_metric(MetricSpec("mae_r_deg", "deg", R, count="count_rotation", metric=rot,
                               description="mean of the three per-axis Euler errors"))
    for axis in ("yaw", "pitch", "roll"):
        register_metric(MetricSpec(f"{axis}_deg", "deg", R, count="count_rotation", metric=rot,
                                   description=f"|{axis} error| under the Euler rule"))
    _count("count_rotation", "samples the rotation metrics average over", rot)
    tr = TranslationMetrics
    for axis in ("x", "y", "z"):
        register_metric(MetricSpec(f"t{axis}_mm", "mm", ("t",), count="count_translation", metric=tr,
                                   description=f"|t_{axis} error|, camera frame"))
    register_metric(MetricSpec("mae_t_mm", "mm", ("t",), count="count_translation", metric=tr,
                               description="mean of the three translation errors"))
    _count("count_translation", "samples the translation metrics average over", tr)
    register_metric(MetricSpec("add_mm", "mm", ("R", "t", "vertices"), count="count_add", metric=ADDMetric,
                               description="mean distance of GT vertices under predicted vs GT pose"))
    _count("count_add", "samples ADD averages over", ADDMetric)
    nme = NME2DMetric
    register_metric(MetricSpec("nme2d", "fraction", ("landmarks_2d",), digits=4, count="count_nme2d", metric=nme,
                               description="68-point NME normalised by sqrt(w h) of the GT landmark box"))
    _count("count_nme2d", "samples NME-2D averages over", nme)
    for name, lo, hi, _ in YAW_BINS:
        register_metric(MetricSpec(f"nme2d_{name}", "fraction", ("landmarks_2d", "R"), digits=4,
                                   count=f"count_nme2d_{name}", metric=nme,
                                   description=f"nme2d over samples with |GT yaw| in [{lo:g}, {hi:g}]"))
    for name, lo, hi, _ in YAW_BINS:
        _count(f"count_nme2d_{name}", f"samples nme2d_{name} averages over", nme)
    register_metric(MetricSpec("dense_mean_mm", "mm", ("vertices",), count="count_dense", metric=Dense3DMetric,
                               description="mean over samples of the per-sample mean vertex error (head frame)"))
    register_metric(MetricSpec("dense_median_mm", "mm", ("vertices",), count="count_dense", metric=Dense3DMetric,
                               description="median over samples of the per-sample mean vertex error (head frame)"))
    _count("count_dense", "samples the dense 3D error averages over", Dense3DMetric)
    register_metric(MetricSpec("face_size_mm2", "mm2", ("vertices", "topology"), digits=1,
                               count="count_face_size", metric=FaceSizeMetric,
                               description="|area(GT mesh) - area(predicted mesh)|"))
    _count("count_face_size", "samples the face size error averages over", FaceSizeMetric)
    _count(NUM_SAMPLES, "test samples evaluated (each exactly once, also on several processes)", None)


_register_builtin()
