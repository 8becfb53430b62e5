"""Working crop: a fixed-size square crop of a full-resolution sample, with every label moved consistently.

Datasets ship images of any size (BIWI 640x480, ARKitFace 800x800, 300W-LP 450x450, Face Synthetics 512x512);
a batch needs one size. ``working_crop`` cuts the square ``square_box(box, scale)`` (scale ~2 leaves room for
rotation / offset / scale augmentation and for the model's own ``CropInput`` crop) and resizes it to
``size`` x ``size``. It is the affine ``A = geometry.crop_transform(square_box(box, scale), size)``, applied to
the image with the integer-pixel-centre convention of ``geometry.crop_images`` (``align_corners=True``;
OpenCV's ``warpAffine`` uses the same convention) and to the labels with ``geometry`` functions, so the
crop is exactly what ``CropInput`` would see had it cropped the original image.

Large downscales are anti-aliased with ``cv2.pyrDown`` (Gaussian 5x5, output pixel ``i`` centred on input
pixel ``2 i``, i.e. the exact map ``x_pyr = x / 2``), folded into ``A`` so the geometry stays exact.
"""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
import torch

from .. import geometry as G

__all__ = ["working_transform", "working_crop", "warp_image"]

# pyrDown while the remaining scale is below this: bilinear sampling then reads every input pixel
_MIN_BILINEAR_SCALE = 0.5


def working_transform(box: np.ndarray, size: int, scale: float) -> np.ndarray:
    """``A (3, 3)`` float64: full-image pixels -> working-crop pixels for the face ``box (4,)``."""
    crop_box = G.square_box(torch.as_tensor(np.asarray(box, np.float64)), float(scale))
    return G.crop_transform(crop_box, int(size)).numpy()


def warp_image(image: np.ndarray, A: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image (H, W, C) uint8`` through the affine ``A (3, 3)`` to ``(size, size, C)``.

    Same convention as ``geometry.crop_images`` (kornia ``warp_affine``, ``align_corners=True``): output pixel
    centre ``p'`` reads input position ``A^-1 p'``, integer pixel centres; outside the image reads zeros.
    Only the region under the crop is processed (cropped first, then pyramid-downsampled if large).
    """
    A = np.asarray(A, np.float64)
    H, W = image.shape[:2]
    # Input region seen by the crop, clipped to the image, plus a margin covering the bilinear and pyramid
    # filter support (a few output pixels = 1 / scale input pixels each), so cutting it changes no output pixel.
    corners = np.linalg.solve(A, np.array([[-1, -1, 1], [size, -1, 1], [-1, size, 1], [size, size, 1]], float).T)
    margin = int(np.ceil(4.0 * max(1.0, 1.0 / A[0, 0]))) + 2
    x0, y0 = (max(int(np.floor(corners[k].min())) - margin, 0) for k in (0, 1))
    x1 = min(int(np.ceil(corners[0].max())) + margin + 1, W)
    y1 = min(int(np.ceil(corners[1].max())) + margin + 1, H)
    if x1 <= x0 or y1 <= y0:  # crop entirely outside the image
        return np.zeros((size, size) + image.shape[2:], image.dtype)
    region = image[y0:y1, x0:x1]
    # x_region = x - x0  =>  A_region = A @ T(x0, y0)
    M = A @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    while M[0, 0] < _MIN_BILINEAR_SCALE and min(region.shape[:2]) >= 4:
        region = cv2.pyrDown(region)
        M = M @ np.diag([2.0, 2.0, 1.0])  # x_region = 2 x_pyr
    out = cv2.warpAffine(region, M[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    return out.reshape((size, size) + image.shape[2:])


def working_crop(sample: Mapping[str, Any], size: int = 256, scale: float = 2.0) -> dict[str, Any]:
    """A schema sample cropped to ``square_box(box, scale)`` and resized to ``size`` x ``size``.

    Labels are moved with ``A = working_transform(box, size, scale)`` (uniform scale ``s = A[0, 0]``):
    ``box``, ``landmarks_2d``: ``A`` applied to the points; ``landmarks_3d``: x, y by ``A``, z times ``s``;
    ``head_2d``: x, y by ``A``, size times ``s``; ``K`` -> ``A @ K``. Without ``K``, ``K_fallback`` =
    ``A @ (K_fallback or geometry.fallback_intrinsics(W, H) of this image)``, so the assumed camera stays the
    original image's. ``R``, ``t``, ``vertices``, ``shape_params`` and the strings are unchanged.
    Labels are float32, the image ``uint8 (size, size, 3)``.
    """
    image = np.asarray(sample["image"])
    H, W = image.shape[:2]
    A = working_transform(sample["box"], size, scale)
    At = torch.from_numpy(A)
    s = A[0, 0]

    def move(points: Any) -> np.ndarray:
        p = torch.as_tensor(np.asarray(points, np.float64))
        return G.apply_transform_2d(At, p).numpy()

    out: dict[str, Any] = {k: v for k, v in sample.items() if k not in ("image", "K_fallback")}
    out["image"] = warp_image(image, A, size)
    out["box"] = move(np.asarray(sample["box"], np.float64).reshape(2, 2)).reshape(4)
    if "landmarks_2d" in sample:
        out["landmarks_2d"] = move(sample["landmarks_2d"])
    if "landmarks_3d" in sample:
        p = np.asarray(sample["landmarks_3d"], np.float64)
        out["landmarks_3d"] = np.concatenate([move(p[:, :2]), p[:, 2:3] * s], 1)
    if "head_2d" in sample:
        h = np.asarray(sample["head_2d"], np.float64)
        out["head_2d"] = np.concatenate([move(h[None, :2])[0], h[2:3] * s])
    if "K" in sample:
        out["K"] = A @ np.asarray(sample["K"], np.float64)
    else:
        base = sample.get("K_fallback")
        base = G.fallback_intrinsics(W, H, torch.float64).numpy() if base is None else np.asarray(base, np.float64)
        out["K_fallback"] = A @ base
    for key in ("box", "landmarks_2d", "landmarks_3d", "head_2d", "K", "K_fallback", "R", "t", "vertices",
                "shape_params"):
        if key in out:
            out[key] = np.asarray(out[key], np.float32)
    return out
