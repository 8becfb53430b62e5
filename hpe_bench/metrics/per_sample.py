"""Per-sample evaluation errors: the single definition every aggregate metric and the per-sample table use.

Every function takes a prediction dict ``pred`` (optional keys ``R (B, 3, 3)``, ``t (B, 3)`` metres,
``landmarks_2d (B, 68, 2)`` pixels, ``vertices (B, N, 3)`` head-frame metres) and a collated batch
(``hpe_bench.schema``) and returns ``(errors, valid)``:

- ``errors``: ``{name: (B,)}`` float64, **NaN where the sample is not evaluated** (GT label missing,
  prediction key missing, or the metric-specific condition below fails);
- ``valid``: ``(B,)`` bool, the samples the metric evaluates (what the aggregates count).

The aggregates select samples with ``valid`` rather than with ``~isnan``: a NaN *prediction* on a labelled
sample therefore makes the aggregate NaN instead of silently dropping the sample from the count.
Computation is in float64 on the batch's device. Rotation and Euler conventions come from
``hpe_bench.geometry`` only.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..assets import topology_triangles
from ..geometry import check_rule, euler_errors, geodesic_angle, transform_points

__all__ = [
    "PER_SAMPLE_KEYS", "ROTATION_KEYS", "TRANSLATION_KEYS", "per_sample_errors", "rotation_errors",
    "translation_errors", "add_errors", "nme2d_errors", "dense_errors", "face_size_errors", "mesh_area",
]

ROTATION_KEYS = ("geodesic_deg", "yaw_deg", "pitch_deg", "roll_deg", "mae_r_deg")
TRANSLATION_KEYS = ("tx_mm", "ty_mm", "tz_mm", "mae_t_mm")
PER_SAMPLE_KEYS = ROTATION_KEYS + TRANSLATION_KEYS + ("add_mm", "nme2d", "dense_mm", "face_size_mm2")

_F = torch.float64
M_TO_MM = 1e3
M2_TO_MM2 = 1e6
Errors = tuple[dict[str, Tensor], Tensor]


def _batch_size(batch: Mapping[str, Any]) -> int:
    return int(batch["has_R"].shape[0])


def _device(batch: Mapping[str, Any]) -> torch.device:
    return batch["has_R"].device


def _has(batch: Mapping[str, Any], field: str) -> Tensor:
    """``(B,)`` bool availability of a label field (a batch without the flag has no such labels)."""
    flag = batch.get(f"has_{field}")
    if flag is None:
        return torch.zeros(_batch_size(batch), dtype=torch.bool, device=_device(batch))
    return flag.to(device=_device(batch), dtype=torch.bool)


def _gt(batch: Mapping[str, Any], field: str) -> Tensor:
    return batch[field].detach().to(device=_device(batch), dtype=_F)


def _pred(pred: Mapping[str, Any], key: str, shape: tuple, batch: Mapping[str, Any]) -> Tensor:
    """Prediction ``pred[key]`` as float64 on the batch device; ``shape`` uses None for a free dimension."""
    x = torch.as_tensor(pred[key]).detach()
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"prediction {key!r} has shape {tuple(x.shape)}, expected {shape}")
    return x.to(device=_device(batch), dtype=_F)


def _none(batch: Mapping[str, Any], keys: tuple[str, ...]) -> Errors:
    """All-NaN errors and an all-False mask (the prediction lacks the key this metric needs)."""
    B, dev = _batch_size(batch), _device(batch)
    nan = torch.full((B,), float("nan"), dtype=_F, device=dev)
    return {k: nan.clone() for k in keys}, torch.zeros(B, dtype=torch.bool, device=dev)


def _masked(values: dict[str, Tensor], valid: Tensor) -> Errors:
    # torch.where (not multiplication) so invalid samples become NaN while NaN predictions on valid ones stay NaN.
    return {k: torch.where(valid, v, torch.full_like(v, float("nan"))) for k, v in values.items()}, valid


def rotation_errors(pred: Mapping[str, Any], batch: Mapping[str, Any], euler_rule: str) -> Errors:
    """Geodesic angle and per-axis |errors| (yaw, pitch, roll), degrees; ``mae_r_deg`` is their mean.

    Needs ``has_R`` and ``pred["R"] (B, 3, 3)``. Per-axis numbers follow ``euler_rule`` ("opnet": scipy 'XYZ',
    wrapped to [0, 180]; "trg": scipy 'yxz', plain differences), see ``geometry.euler_errors``.
    """
    check_rule(euler_rule)
    if "R" not in pred:
        return _none(batch, ROTATION_KEYS)
    B = _batch_size(batch)
    R_hat, R = _pred(pred, "R", (B, 3, 3), batch), _gt(batch, "R")
    eul = euler_errors(R_hat, R, euler_rule)  # (B, 3) yaw, pitch, roll
    values = {"geodesic_deg": torch.rad2deg(geodesic_angle(R_hat, R)), "yaw_deg": eul[:, 0],
              "pitch_deg": eul[:, 1], "roll_deg": eul[:, 2], "mae_r_deg": eul.mean(-1)}
    return _masked(values, _has(batch, "R"))


def translation_errors(pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
    """|dx|, |dy|, |dz| of the camera-frame head centre in mm and ``mae_t_mm`` their mean.

    Needs ``has_t`` and ``pred["t"] (B, 3)`` (metres).
    """
    if "t" not in pred:
        return _none(batch, TRANSLATION_KEYS)
    B = _batch_size(batch)
    d = (_pred(pred, "t", (B, 3), batch) - _gt(batch, "t")).abs() * M_TO_MM  # (B, 3)
    values = {"tx_mm": d[:, 0], "ty_mm": d[:, 1], "tz_mm": d[:, 2], "mae_t_mm": d.mean(-1)}
    return _masked(values, _has(batch, "t"))


def add_errors(pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
    """ADD: mean over the sample's valid GT vertices v of ``|(R_hat v + t_hat) - (R v + t)|``, mm.

    Needs ``has_R``, ``has_t``, ``has_vertices`` (at least one valid vertex) and ``pred["R"]``, ``pred["t"]``.
    Only GT vertices are used (the prediction's own mesh plays no part), as in TRG.
    """
    if "R" not in pred or "t" not in pred:
        return _none(batch, ("add_mm",))
    B = _batch_size(batch)
    R_hat, t_hat = _pred(pred, "R", (B, 3, 3), batch), _pred(pred, "t", (B, 3), batch)
    V, mask = _gt(batch, "vertices"), batch["vertices_mask"].to(_device(batch))  # (B, Nmax, 3), (B, Nmax)
    dist = (transform_points(V, R_hat, t_hat) - transform_points(V, _gt(batch, "R"), _gt(batch, "t"))).norm(dim=-1)
    n = mask.sum(1)
    add = torch.where(mask, dist, torch.zeros_like(dist)).sum(1) / n.clamp_min(1) * M_TO_MM
    valid = _has(batch, "R") & _has(batch, "t") & _has(batch, "vertices") & (n > 0)
    return _masked({"add_mm": add}, valid)


def nme2d_errors(pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
    """NME-2D (AFLW2000-3D rule) as a **fraction** (0.035 means 3.5 %), key ``nme2d``.

    ``mean_k |p_hat_k - p_k| / sqrt(w h)`` over the 68 points, with ``w, h`` the x/y extent of the 68 GT points.
    Needs ``has_landmarks_2d`` and ``pred["landmarks_2d"] (B, 68, 2)`` in pixels of the batch image.
    A sample whose GT landmark box has zero area is skipped (its normaliser is undefined).
    """
    if "landmarks_2d" not in pred:
        return _none(batch, ("nme2d",))
    gt = _gt(batch, "landmarks_2d")  # (B, 68, 2)
    p = _pred(pred, "landmarks_2d", tuple(gt.shape), batch)
    extent = gt.amax(dim=1) - gt.amin(dim=1)  # (B, 2): w, h
    area = extent[:, 0] * extent[:, 1]
    nme = (p - gt).norm(dim=-1).mean(-1) / area.clamp_min(1e-12).sqrt()
    return _masked({"nme2d": nme}, _has(batch, "landmarks_2d") & (area > 0))


def _comparable_vertices(pred: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """``(V_hat (B, N, 3), V (B, N, 3), valid (B,))``: samples whose valid GT vertices are exactly the first N.

    Collation pads at the end, so a sample with ``N`` valid GT vertices is comparable with an ``N``-vertex prediction.
    """
    B = _batch_size(batch)
    V_hat = _pred(pred, "vertices", (B, None, 3), batch)
    V, mask = _gt(batch, "vertices"), batch["vertices_mask"].to(_device(batch))
    N = V_hat.shape[1]
    if N == 0 or N > V.shape[1]:
        return V_hat, V_hat.new_zeros(V_hat.shape), torch.zeros(B, dtype=torch.bool, device=_device(batch))
    valid = _has(batch, "vertices") & (mask.sum(1) == N) & mask[:, :N].all(1)
    return V_hat, V[:, :N], valid


def dense_errors(pred: Mapping[str, Any], batch: Mapping[str, Any]) -> Errors:
    """Dense 3D error: per-sample mean L2 between predicted and GT head-frame vertices, mm, no alignment.

    Needs ``has_vertices`` and ``pred["vertices"] (B, N, 3)`` with N equal to the sample's valid GT vertex count.
    """
    if "vertices" not in pred:
        return _none(batch, ("dense_mm",))
    V_hat, V, valid = _comparable_vertices(pred, batch)
    return _masked({"dense_mm": (V_hat - V).norm(dim=-1).mean(-1) * M_TO_MM}, valid)


def mesh_area(vertices: Tensor, triangles: Tensor) -> Tensor:
    """Total area ``(...,)`` of the triangles ``(F, 3)`` (vertex indices) on ``vertices (..., N, 3)``, units²."""
    a, b, c = (vertices[..., triangles[:, i], :] for i in range(3))
    return 0.5 * torch.linalg.cross(b - a, c - a, dim=-1).norm(dim=-1).sum(-1)


def face_size_errors(pred: Mapping[str, Any], batch: Mapping[str, Any],
                     triangles_fn: Callable[[str], Tensor] | None = None) -> Errors:
    """Face size error ``|area(GT mesh) - area(predicted mesh)|`` in mm² (sum of triangle areas).

    Needs what ``dense_errors`` needs plus a known, non-empty ``batch["topology"][i]``; triangles come from
    ``triangles_fn(name)`` (default ``assets.topology_triangles``; a ``KeyError`` marks an unknown topology,
    whose samples are skipped). Raises ``ValueError`` if a topology's triangles index past the vertex count.
    """
    if "vertices" not in pred:
        return _none(batch, ("face_size_mm2",))
    triangles_fn = triangles_fn or topology_triangles
    V_hat, V, valid = _comparable_vertices(pred, batch)
    err = torch.full((V.shape[0],), float("nan"), dtype=_F, device=V.device)
    topologies = list(batch.get("topology", [""] * V.shape[0]))
    ok = valid.tolist()  # one device sync, not one per sample
    for name in sorted({n for n, v in zip(topologies, ok) if v}):
        rows = torch.tensor([i for i, (n, v) in enumerate(zip(topologies, ok)) if v and n == name],
                            dtype=torch.long, device=V.device)
        try:
            tri = torch.as_tensor(triangles_fn(name), dtype=torch.long, device=V.device) if name else None
        except KeyError:
            tri = None
        if tri is None or tri.numel() == 0:
            valid[rows] = False  # unknown or empty topology: no triangles to measure
            continue
        if int(tri.max()) >= V.shape[1]:
            raise ValueError(f"topology {name!r} indexes vertex {int(tri.max())} but samples have {V.shape[1]} vertices")
        err[rows] = (mesh_area(V[rows], tri) - mesh_area(V_hat[rows], tri)).abs() * M2_TO_MM2
    return _masked({"face_size_mm2": err}, valid)


def per_sample_errors(pred: Mapping[str, Any], batch: Mapping[str, Any], euler_rule: str = "trg",
                      triangles_fn: Callable[[str], Tensor] | None = None) -> dict[str, Tensor]:
    """All per-sample errors ``{name: (B,)}`` (keys ``PER_SAMPLE_KEYS``), NaN where not evaluated.

    Units: degrees (rotation), mm (translation, ADD, dense), mm² (face size), fraction (``nme2d``).
    """
    out: dict[str, Tensor] = {}
    for errors, _ in (rotation_errors(pred, batch, euler_rule), translation_errors(pred, batch),
                      add_errors(pred, batch), nme2d_errors(pred, batch), dense_errors(pred, batch),
                      face_size_errors(pred, batch, triangles_fn)):
        out.update(errors)
    return {k: out[k] for k in PER_SAMPLE_KEYS}
