"""Labels of the 3DDFA ``.mat`` files (300W-LP, AFLW2000-3D) and of OpNet's 68-point BFM model.

The conversions follow OpNet's reference converters (facts in ../shared/reference/opnet.md, re-derived here):

- ``Pose_Para = [pitch, yaw, roll, tx, ty, tz, scale]`` (radians): ``R = geometry.pose_para_to_matrix``;
  head radius in pixels ``size = 0.5 * scale / 224 * W * 1e5`` (a 100 mm head radius); the BFM origin
  projects to ``(tx, H - ty)``.
- OpNet's 68-point model (``hpe_bench/assets/bfm68.npz``) has its origin **between the eyes**, at
  ``HEAD_CENTRE_OFFSET = (0, -0.26, -0.9)`` head radii from the BFM origin (head frame). Its ``coord``
  (schema ``head_2d``) is therefore ``(tx, H - ty) + (R @ offset)[:2] * size``; only with it does
  ``R @ local * size + (x, y, 0)`` reproduce the landmarks (tests/test_data_opnet_h5.py, real data).
- Shape label ``[Shape_Para[:40] / (20 * 1e5), Exp_Para[:10] / 5]`` (40 identity + 10 expression).
- ``landmarks_3d`` z (package convention for these datasets): depth in pixels relative to the mean of the
  four eye corners (36, 39, 42, 45), positive **away from the camera**. ``pt3d_68`` of the ``.mat`` files
  has z toward the camera (3DDFA) plus an offset, so it is negated and re-centred, as OpNet does. The
  eye-corner centre is the bfm68 origin to 0.4 px on the real samples, so ``z`` is also the depth relative
  to ``head_2d``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.io
import torch

from .. import geometry as G
from ..assets import bfm68
from .raw import RecordError, require_finite

HEAD_RADIUS_MICRON = 1e5
HEAD_CENTRE_OFFSET = np.array([0.0, -0.26, -0.9])  # bfm68 origin in the BFM head frame, head radii
EYE_CORNERS = (36, 39, 42, 45)

BOX_RULES = ("landmarks", "head")


def load_mat(path: str | Path, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """``scipy.io.loadmat`` of ``path`` as float64 arrays of ``fields``; ``RecordError`` naming the file if unreadable
    or a field is missing."""
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises ValueError/TypeError/OSError for corrupt files
        raise RecordError(f"cannot read MATLAB file {str(path)!r}: {err}") from err
    missing = [f for f in fields if f not in data]
    if missing:
        raise RecordError(f"MATLAB file {str(path)!r} lacks field(s) {missing}; it has "
                          f"{sorted(k for k in data if not k.startswith('__'))}")
    return {f: np.asarray(data[f], dtype=np.float64) for f in fields}


def check_shape(value: np.ndarray, size: int, field: str, where: str) -> np.ndarray:
    """Flatten a MATLAB vector (``1xN`` or ``Nx1``) and check it has at least ``size`` entries."""
    flat = np.asarray(value).reshape(-1)
    if flat.size < size:
        raise RecordError(f"{where}: field {field!r} has {flat.size} entries, expected at least {size}")
    return flat


def pose_para_labels(pose_para: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``Pose_Para (7,)`` of an image ``width x height`` -> ``R (3, 3)`` and ``head_2d (3,)`` (OpNet coord)."""
    pitch, yaw, roll, tx, ty, _tz, scale = (float(v) for v in pose_para[:7])
    R = G.pose_para_to_matrix(*(torch.tensor(a, dtype=torch.float64) for a in (pitch, yaw, roll))).numpy()
    size = 0.5 * scale / 224.0 * width * HEAD_RADIUS_MICRON
    xy = np.array([tx, height - ty]) + (R @ HEAD_CENTRE_OFFSET)[:2] * size
    return R, np.array([xy[0], xy[1], size])


def head_centre_2d(R: np.ndarray, head_2d: np.ndarray) -> np.ndarray:
    """Projection ``(2,)`` of the BFM head centre (origin of the 3DMM, ~0.9 radii behind the eyes)."""
    return head_2d[:2] - (R @ HEAD_CENTRE_OFFSET)[:2] * head_2d[2]


def shape_label(shape_para: np.ndarray, exp_para: np.ndarray) -> np.ndarray:
    """``Shape_Para (>=40,)``, ``Exp_Para (>=10,)`` -> bfm68 coefficients ``(50,)``."""
    return np.concatenate([shape_para[:40] / (20.0 * HEAD_RADIUS_MICRON), exp_para[:10] / 5.0])


def depth_centred(points: np.ndarray) -> np.ndarray:
    """``(68, 3)`` with z minus the mean z of the four eye corners."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[:, 2] -= out[list(EYE_CORNERS), 2].mean()
    return out


def landmarks_from_pt3d(pt3d_68: np.ndarray) -> np.ndarray:
    """3DDFA ``pt3d_68 (3, 68)`` (z toward the camera) -> ``landmarks_3d (68, 3)`` (z away, eye-corner centred)."""
    pts = np.asarray(pt3d_68, dtype=np.float64).T.copy()
    pts[:, 2] *= -1.0
    return depth_centred(pts)


def posed_bfm68(R: np.ndarray, head_2d: np.ndarray, shape_params: np.ndarray) -> np.ndarray:
    """OpNet's orthographic landmark model ``R @ (mean + basis @ s) * size + (x, y, 0)`` -> ``(68, 3)`` pixels."""
    asset = bfm68()
    local = asset["mean"].astype(np.float64) + asset["basis"].astype(np.float64) @ shape_params
    return local @ R.T * head_2d[2] + np.array([head_2d[0], head_2d[1], 0.0])


def valid_landmarks(points_xy: np.ndarray) -> np.ndarray:
    """``(68,)`` bool: False for points marked missing with the ``(-1, -1)`` sentinel."""
    return ~np.all(points_xy == -1.0, axis=-1)


def head_box(R: np.ndarray, head_2d: np.ndarray, shape_params: np.ndarray | None = None) -> np.ndarray:
    """Head box ``(4,)`` from the pose labels alone: the box of the head sphere (radius ``head_2d[2]``, 100 mm,
    around the projected BFM head centre) united with the posed bfm68 landmarks (mean shape when
    ``shape_params`` is None), so it holds the whole skull and the chin at every pose."""
    c = head_centre_2d(R, head_2d)
    r = head_2d[2]
    shape = np.zeros(bfm68()["basis"].shape[-1]) if shape_params is None else shape_params
    pts = posed_bfm68(R, head_2d, shape)[:, :2]
    return np.concatenate([np.minimum(c - r, pts.min(0)), np.maximum(c + r, pts.max(0))])


def landmark_box(points_xy: np.ndarray) -> np.ndarray:
    """Tight box ``(4,)`` of 2D points ``(N, 2)`` (OpNet's ``roi``; TRG crops its centre at 1.5x the longer side)."""
    return np.concatenate([points_xy.min(0), points_xy.max(0)])


def choose_box(rule: str, where: str, landmarks_xy: np.ndarray | None, R: np.ndarray | None,
               head_2d: np.ndarray | None, shape_params: np.ndarray | None = None,
               min_valid: int = 34) -> np.ndarray:
    """Box of a sample under ``rule`` (``"landmarks"`` | ``"head"``).

    ``landmarks`` uses the valid points only; with fewer than ``min_valid`` valid points (or none given) it
    falls back to the head box, since the extent of a few points is not a face box.
    """
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {BOX_RULES}")
    if rule == "landmarks" and landmarks_xy is not None:
        ok = valid_landmarks(landmarks_xy)
        if ok.sum() >= min_valid:
            return landmark_box(landmarks_xy[ok])
    if R is None or head_2d is None:
        raise RecordError(f"{where}: no valid landmarks and no pose label to build a {rule!r} box")
    return head_box(R, head_2d, shape_params)


def mat_labels(mat: dict[str, Any], width: int, height: int, where: str) -> dict[str, np.ndarray]:
    """``R``, ``head_2d``, ``shape_params`` from a loaded 3DDFA ``.mat`` (``Pose_Para``, ``Shape_Para``,
    ``Exp_Para``); ``RecordError`` naming ``where`` on short or non-finite parameters."""
    pose = check_shape(mat["Pose_Para"], 7, "Pose_Para", where)
    shp = check_shape(mat["Shape_Para"], 40, "Shape_Para", where)
    exp = check_shape(mat["Exp_Para"], 10, "Exp_Para", where)
    require_finite({"Pose_Para": pose[:7], "Shape_Para": shp[:40], "Exp_Para": exp[:10]}, where)
    if pose[6] <= 0:
        raise RecordError(f"{where}: Pose_Para scale {pose[6]} must be positive")
    R, head_2d = pose_para_labels(pose, width, height)
    return {"R": R, "head_2d": head_2d, "shape_params": shape_label(shp, exp)}
