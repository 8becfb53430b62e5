"""Working crop: a fixed-size square crop of a full-resolution sample, with every label moved consistently.

Datasets ship images of any size (BIWI 640x480, ARKitFace 800x800, 300W-LP 450x450, Face Synthetics 512x512);
a batch needs one size. ``working_crop`` cuts the square ``square_box(box, scale)`` (scale ~2 leaves room for
rotation / offset / scale augmentation and for the model's own ``CropInput`` crop) and resizes it to
``size`` x ``size``. It is the affine ``A = geometry.crop_transform(square_box(box, scale), size)``, applied to
the image with the integer-pixel-centre convention of ``geometry.crop_images`` (``align_corners=True``;
OpenCV's ``warpAffine`` uses the same convention) and to the labels with ``geometry.transform_labels``, so the
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
from ..schema import FIELD_NAMES

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

    The labels follow ``A = working_transform(box, size, scale)`` by ``geometry.transform_labels`` (the rules shared
    with the training augmentation; ``A`` is a scale + shift, so ``R``, ``t``, ``vertices`` and ``shape_params`` are
    unchanged and ``K -> A @ K``). Without ``K`` the sample gets ``K_fallback`` = ``A @ (its K_fallback or
    geometry.fallback_intrinsics(W, H) of this image)``, so the assumed camera stays the original image's; with
    ``K`` it has none. Labels are float32 (moved in float64), the image ``uint8 (size, size, 3)``.
    """
    image = np.asarray(sample["image"])
    H, W = image.shape[:2]
    A = working_transform(sample["box"], size, scale)
    moved = G.transform_labels(_as_batch(sample), torch.from_numpy(A)[None], (W, H))
    out: dict[str, Any] = {k: v for k, v in sample.items() if k not in ("image", "box") + FIELD_NAMES}
    out["image"] = warp_image(image, A, size)
    out["box"] = moved["box"][0].numpy().astype(np.float32)
    for key in FIELD_NAMES:
        if bool(moved.get(f"has_{key}", torch.zeros(1, dtype=torch.bool))[0]):
            out[key] = moved[key][0].numpy().astype(np.float32)
    return out


def _as_batch(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The labels of one sample as a float64 batch of one (``has_<field>`` from the keys present)."""
    batch: dict[str, Any] = {"box": torch.as_tensor(np.asarray(sample["box"], np.float64))[None],
                             "topology": [str(sample.get("topology", ""))]}
    for key in FIELD_NAMES:
        batch[f"has_{key}"] = torch.tensor([key in sample])
        if key in sample:
            batch[key] = torch.as_tensor(np.asarray(sample[key], np.float64))[None]
    return batch
