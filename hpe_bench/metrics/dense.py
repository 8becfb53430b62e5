"""Dense-mesh metrics: dense 3D vertex error (mean and median) and face size error."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from .base import SumCountMetric
from .per_sample import Errors, dense_errors, face_size_errors

__all__ = ["Dense3DMetric", "FaceSizeMetric"]


class Dense3DMetric(SumCountMetric):
    """Per-sample mean vertex L2 error (mm, head frame, no alignment): mean and median over samples.

    Evaluated samples: ``has_vertices`` and ``pred["vertices"] (B, N, 3)`` with N = the sample's GT vertex count.
    Output: ``dense_mean_mm, dense_median_mm, count_dense``. The median needs every per-sample value, so they
    are kept in a ``"cat"`` state (one float64 per sample).
    """

    keys = ("dense_mm",)
    count_name = "count_dense"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return dense_errors(pred, batch)

    def update(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        values, valid = self.errors(pred, batch)
        valid = valid.to(self.count.device)
        v = values["dense_mm"].to(self.count.device)[valid]
        self.count += valid.sum()
        self.sum_dense_mm = self.sum_dense_mm + v.sum()
        self.values.append(v)

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        vals = self.values
        vals = dim_zero_cat(vals) if isinstance(vals, Tensor) or len(vals) else torch.zeros(0, dtype=torch.float64)
        # quantile (not torch.median) so an even count gives the midpoint of the two central values
        median = torch.quantile(vals, 0.5) if vals.numel() else torch.tensor(float("nan"), dtype=torch.float64)
        return {"dense_mean_mm": out["dense_mm"], "dense_median_mm": median.to(out["dense_mm"]),
                "count_dense": out["count_dense"]}


class FaceSizeMetric(SumCountMetric):
    """Mean ``|area(GT) - area(pred)|`` (mm²) of the dense mesh, triangles from the sample's topology name.

    Evaluated samples: those of ``Dense3DMetric`` whose ``batch["topology"][i]`` is known and non-empty.
    ``triangles_fn(name) -> (F, 3)`` overrides ``assets.topology_triangles`` (a ``KeyError`` means unknown).
    Output: ``face_size_mm2, count_face_size``.
    """

    keys = ("face_size_mm2",)
    count_name = "count_face_size"

    def __init__(self, triangles_fn: Callable[[str], Tensor] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.triangles_fn = triangles_fn

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
        return face_size_errors(pred, batch, self.triangles_fn)
