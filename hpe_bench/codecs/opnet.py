"""OpNet's targets codec: schema labels <-> OpNet's normalised crop space, both directions.

OpNet (``models/opnet.py``) predicts everything in the *normalised crop frame*: crop pixels mapped to
``[-1, 1]`` by ``geometry.crop_to_normalized`` (x right, y down, z into the image), orthographic.

- ``encode(batch, inputs)``: schema labels (``R, t, K, landmarks_2d/3d, box, head_2d, shape_params``) + the
  crop (``CropInput``'s ``A`` full -> crop pixels, ``K``, ``has_K``, side ``S``) -> OpNet's targets ``quat,
  coord, roi, landmarks_crop, shape_params`` with ``has_*`` masks (what ``losses/opnet.py`` trains on).
- ``decode(out, inputs)``: OpNet's raw outputs + the same crop -> ``R (B, 3, 3)`` camera frame, ``t (B, 3)``
  metres, ``coord_px`` and ``landmarks_2d`` full-image pixels (beyond the paper: 6DoF from an orthographic
  network; the network's ``forward`` calls it, the metrics read its results).

Both directions use the same two facts, so a label encoded and decoded again is recovered exactly:

1. **Head-size prior.** OpNet's ``coord = (x, y, size)`` is the image position of the BFM68 model's origin
   and the image size of one BFM68 unit. A similarity fit (scale + offset, the frames share their axes) of
   the BFM68 mean (``assets/bfm68.npz``) to the 68 keypoints of the ARKit mean face (``assets/arkit_face.npz``,
   metres, the package head frame) gives ``BFM_UNIT_M = 0.0980`` m per unit (an average head "radius")
   and the BFM68 origin at ``BFM_ORIGIN_M`` in the head frame (RMS residual 6.5 mm; ``fit_bfm68_to_arkit``
   recomputes it, tested). With ``K`` and a pose: ``p = t + R o``, ``(x, y) = project(p)``,
   ``size = fx * BFM_UNIT_M / p_z``; backwards ``p_z = fx * BFM_UNIT_M / size``.
2. **Perspective correction.** A head seen along the ray through its image position looks like an
   orthographic view of ``R_local = ray_rotation(K, uv)^T R``. For samples with a calibrated ``K``
   (``has_K``) the rotation target is that ``R_local`` with ``uv`` = the head's image position (the
   label's; at inference the predicted ``coord``), and the prediction is mapped back with
   ``ray_rotation(K, uv) @ R_local``. The ray through the *head* (not the crop centre) is used because it is
   what the crop's pixels determine: the same face shifted inside the crop (augmentation offsets) keeps the
   same target, and a crop alone cannot know the camera's focal length needed to relate the two. Test crops
   are centred on the face box, so both rays nearly agree there. Samples without ``K`` (300W-LP,
   AFLW2000-3D: weak-perspective labels) use ``R`` as is, in both directions.

Every crop, intrinsics and frame rule comes from ``hpe_bench.geometry`` (``crop_to_normalized`` and its
``normalized_per_crop_pixel``, ``apply_transform_2d``, ``affine_size_scale`` / ``affine_rotation`` of the crop
map, ``ray_rotation``, ``project_points``); this module only adds OpNet's own quantities (the head-size prior,
the BFM68 origin).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import geometry as G
from ..assets import arkit_face, bfm68

__all__ = ["BFM_UNIT_M", "BFM_ORIGIN_M", "MIN_CROP_SIZE", "encode", "decode", "head_coord_from_pose",
           "translation_from_head_coord", "fit_bfm68_to_arkit"]

BFM_UNIT_M = 0.0980063
"""Metres per BFM68 unit (head-size prior), from ``fit_bfm68_to_arkit``."""
BFM_ORIGIN_M = (0.0018109, -0.0231674, -0.0375693)
"""The BFM68 model origin (OpNet's head centre) in the package head frame, metres, from ``fit_bfm68_to_arkit``."""
MIN_CROP_SIZE = 0.005
"""Floor of the predicted size (normalised crop units) in ``decode``."""


def fit_bfm68_to_arkit() -> tuple[float, np.ndarray, float]:
    """Least-squares ``arkit_kp68 ~ s * bfm_mean + o`` (scale and offset only: both assets use the package
    head frame's axes). Returns ``(s metres per unit, o (3,) metres, RMS residual metres)``."""
    arkit = arkit_face()
    Y = arkit["mean_vertices"][arkit["keypoints_68"]].astype(np.float64)
    X = bfm68()["mean"].astype(np.float64)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    s = float((Xc * Yc).sum() / (Xc ** 2).sum())
    o = Y.mean(0) - s * X.mean(0)
    rms = float(np.sqrt(((Y - s * X - o) ** 2).sum(1).mean()))
    return s, o, rms


@lru_cache(maxsize=None)
def _bfm_mean() -> Tensor:
    return torch.as_tensor(bfm68()["mean"], dtype=torch.float64)


def _crop(inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(A, K, has_K, S)`` of ``CropInput``'s output (S = the crop image's side)."""
    return inputs["A"], inputs["K"], inputs["has_K"], int(inputs["image"].shape[-1])


def _to_crop(points: Tensor, A: Tensor, S: int) -> Tensor:
    """Full-image pixels ``(B, N, 2)`` -> normalised crop ``[-1, 1]`` ``(B, N, 2)``."""
    return G.crop_to_normalized(G.apply_transform_2d(A, points), S)


def _to_full(points: Tensor, A: Tensor, S: int) -> Tensor:
    """Normalised crop ``(B, N, 2)`` -> full-image pixels (inverse of ``_to_crop``)."""
    return G.apply_transform_2d(torch.linalg.inv(A), G.normalized_to_crop(points, S))


def head_coord_from_pose(R: Tensor, t: Tensor, K: Tensor, unit_m: float = BFM_UNIT_M,
                         origin_m: tuple = BFM_ORIGIN_M) -> Tensor:
    """OpNet ``coord`` in full-image pixels ``(B, 3)`` = (x, y, size) of a head at pose ``R (B, 3, 3)``,
    ``t (B, 3)`` seen with ``K (B, 3, 3)``: the projected BFM68 origin and ``fx * unit_m / depth``."""
    o = torch.as_tensor(origin_m, dtype=R.dtype, device=R.device)
    p = t + R @ o
    uv = G.project_points(p.unsqueeze(-2), K).squeeze(-2)
    size = K[..., 0, 0] * unit_m / p[..., 2]
    return torch.cat([uv, size.unsqueeze(-1)], -1)


def translation_from_head_coord(R: Tensor, coord_px: Tensor, K: Tensor, unit_m: float = BFM_UNIT_M,
                                origin_m: tuple = BFM_ORIGIN_M) -> Tensor:
    """Inverse of ``head_coord_from_pose``: ``t (B, 3)`` metres from ``coord_px (B, 3)``, ``R``, ``K``."""
    o = torch.as_tensor(origin_m, dtype=R.dtype, device=R.device)
    depth = K[..., 0, 0] * unit_m / coord_px[..., 2]
    ray = torch.linalg.solve(K, F.pad(coord_px[..., :2], (0, 1), value=1.0).unsqueeze(-1)).squeeze(-1)
    return ray / ray[..., 2:3] * depth.unsqueeze(-1) - R @ o


def encode(batch: Mapping[str, Any], inputs: Mapping[str, Tensor], unit_m: float = BFM_UNIT_M,
           origin_m: tuple = BFM_ORIGIN_M) -> dict[str, Tensor]:
    """OpNet's crop-space targets from schema labels (see the module docstring).

    Args:
        batch: collated schema batch (``R, t, landmarks_2d, landmarks_3d, box, head_2d, shape_params`` and
            their ``has_*``).
        inputs: ``CropInput``'s output; read: ``A (B, 3, 3)`` full -> crop pixels, ``K (B, 3, 3)`` full-image
            intrinsics (the fallback where ``has_K (B,)`` is False), ``image (B, C, S, S)`` (only its side S).
    Returns ``quat (B, 4)``, ``coord (B, 3)``, ``roi (B, 4)``, ``landmarks_crop (B, 68, 3)``,
    ``shape_params (B, 50)``, each with ``has_<key> (B,)``, and ``has_landmarks_crop_z (B,)``; float32.
    ``has_roi`` is ``has_landmarks_crop_z`` (the samples with pose, position and 3D landmarks: the authors' only
    tag with a box term), although every sample carries a box.

    - coord: ``head_2d`` where given, else from ``K`` (calibrated only), ``R`` and ``t`` with the head-size prior.
    - quat: ``R`` in the crop frame (perspective-corrected where ``has_K``; through the head position, or the
      crop centre when the sample has no position label).
    - landmarks: ``landmarks_3d`` (z scaled like x, y and shifted so its 68-point mean equals that of the BFM
      mean face posed with the label pose: datasets put z = 0 at different places and an orthographic depth
      offset is unobservable), else ``landmarks_2d`` with x, y only.
    """
    A, K, has_K, S = _crop(inputs)
    dt = torch.float64  # labels in float64: the round trip must not lose precision
    A, K = A.to(dt), K.to(dt)
    dev = A.device
    B = A.shape[0]
    get = lambda k: batch[k].to(device=dev, dtype=dt)  # noqa: E731
    has = lambda k: batch[f"has_{k}"].to(device=dev, dtype=torch.bool)  # noqa: E731
    has_K = has_K.to(device=dev, dtype=torch.bool)
    # Sizes scale by the RMS of the crop map's axis scales, depths by sqrt|det|, as the OpNet code transforms
    # coord and points (equal for the square crops; the code's integer windows can be 1 px from square).
    s_A, unit = G.affine_size_scale(A), G.normalized_per_crop_pixel(S)
    s_z = G.det2(A[:, :2, :2]).abs().sqrt()
    out: dict[str, Tensor] = {}

    # --- coord: full-image pixels first (needed for the rotation's ray), then the crop.
    has_t_pose = has_K & has("R") & has("t")
    coord_px = head_coord_from_pose(get("R"), torch.where(has_t_pose[:, None], get("t"), _safe_t(B, dev)),
                                    K, unit_m, origin_m)
    has_head = has("head_2d")
    coord_px = torch.where(has_head[:, None], get("head_2d"), coord_px)
    has_coord = has_head | has_t_pose
    coord_xy = _to_crop(coord_px[:, None, :2], A, S)[:, 0]
    out["coord"] = torch.cat([coord_xy, (coord_px[:, 2] * s_A * unit)[:, None]], -1)
    out["has_coord"] = has_coord

    # --- rotation
    crop_centre = G.apply_transform_2d(torch.linalg.inv(A), torch.full((B, 1, 2), S / 2.0, dtype=dt, device=dev))[:, 0]
    uv = torch.where(has_coord[:, None], coord_px[:, :2], crop_centre)
    R = get("R")
    R_local = torch.where(has_K[:, None, None], G.ray_rotation(K, uv).transpose(-1, -2) @ R, R)
    R_crop = G.affine_rotation(A) @ R_local
    out["quat"] = G.matrix_to_quat(R_crop)
    out["has_quat"] = has("R")

    # --- face box: the 4 corners mapped into the crop, their bounding box.
    box = get("box")
    corners = torch.stack([box[:, [0, 1]], box[:, [2, 1]], box[:, [2, 3]], box[:, [0, 3]]], 1)
    out["roi"] = G.box_from_points(_to_crop(corners, A, S))

    # --- landmarks
    has3, has2 = has("landmarks_3d"), has("landmarks_2d")
    lm3, lm2 = get("landmarks_3d"), get("landmarks_2d")
    xy = torch.where(has3[:, None, None], lm3[..., :2], lm2)
    xy = _to_crop(xy, A, S)
    z = lm3[..., 2] * (s_z * unit)[:, None]
    use_z = has3 & out["has_quat"] & has_coord
    # Every sample has a box, but the authors train box / nllbox only on their POSE_WITH_LANDMARKS tag (pose,
    # position and 3D landmarks: RA-300W-LP, WFLW-LP, LaPa-LP); pose-only (BIWI) and 2D-landmark samples (Face
    # Synthetics) do not see it (shared/reference/losses/opnet_loss_cases.md, "Tags").
    out["has_roi"] = use_z
    posed_mean = (_bfm_mean().to(device=dev) @ R_crop.transpose(-1, -2))[..., 2].mean(-1) * out["coord"][:, 2]
    z = z - z.mean(-1, keepdim=True) + posed_mean[:, None]
    z = torch.where(use_z[:, None], z, torch.zeros_like(z))
    out["landmarks_crop"] = torch.cat([xy, z.unsqueeze(-1)], -1)
    out["has_landmarks_crop"] = has3 | has2
    out["has_landmarks_crop_z"] = use_z

    out["shape_params"] = get("shape_params")
    out["has_shape_params"] = has("shape_params")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


def _safe_t(B: int, device) -> Tensor:
    """A harmless placeholder translation (1 m in front) where a sample has no ``t`` (masked out later)."""
    return torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device).expand(B, 3)


def decode(out: Mapping[str, Tensor], inputs: Mapping[str, Tensor], unit_m: float = BFM_UNIT_M,
           origin_m: tuple = BFM_ORIGIN_M) -> dict[str, Tensor]:
    """OpNet crop outputs -> full-image / camera predictions (inverse of ``encode``).

    Args:
        out: ``R_crop (B, 3, 3)`` rotation in the crop frame, ``coord (B, 3)`` normalised crop (x, y, size),
            optionally ``landmarks_crop (B, 68, 3)``.
        inputs: as in ``encode``.
    Returns ``R (B, 3, 3)`` (perspective-corrected where ``has_K``), ``coord_px (B, 3)`` full-image pixels,
    ``t (B, 3)`` metres (with ``K``, the fallback one where ``has_K`` is False: then only relative) and, with
    ``landmarks_crop``, ``landmarks_2d (B, 68, 2)`` full-image pixels; in the dtype of ``R_crop``.
    """
    A, K, has_K, S = _crop(inputs)
    # float64 (never autocast to half): small 3x3 maths, and solve/inv/det need the precision.
    out_dtype = out["R_crop"].dtype
    R_crop, coord, A, K = (x.to(torch.float64) for x in (out["R_crop"], out["coord"], A, K))
    has_K = has_K.to(device=R_crop.device, dtype=torch.bool)
    xy = _to_full(coord[:, None, :2], A, S)[:, 0]
    # smoothclip keeps size > 0 but an untrained head can underflow it to 0 (depth inf): floor it at 0.5 % of
    # the crop (a head radius of ~0.3 crop pixel), far below any real face, so every prediction stays finite.
    # Back to image px: x with the window's width scale, y with its height scale (inverse of A), size with the RMS
    # of the two, as the OpNet code maps predictions back (its windows can be 1 px from square).
    size = (coord[:, 2].clamp_min(MIN_CROP_SIZE) * G.affine_size_scale(torch.linalg.inv(A))
            / G.normalized_per_crop_pixel(S))
    coord_px = torch.cat([xy, size[:, None]], -1)
    R_local = G.affine_rotation(A).transpose(-1, -2) @ R_crop
    R = torch.where(has_K[:, None, None], G.ray_rotation(K, xy) @ R_local, R_local)
    t = translation_from_head_coord(R, coord_px, K, unit_m, origin_m)
    cam = {"R": R.to(out_dtype), "t": t.to(out_dtype), "coord_px": coord_px.to(out_dtype)}
    if "landmarks_crop" in out:
        lm = out["landmarks_crop"][..., :2].double()
        cam["landmarks_2d"] = _to_full(lm, A, S).to(out["coord"].dtype)
    return cam
