"""Model input: square crop around the face box, resized, normalised; crop intrinsics and box features.

Runs batch-wise on the model's device (no per-sample CPU work), so augmentation that changes the box
or the image can run on the GPU before it. All geometry comes from ``hpe_bench.geometry``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import kornia.color as KCol
import torch
from torch import Tensor, nn

from .. import geometry as G

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CropInput(nn.Module):
    """Turn a collated batch into network inputs.

    Args:
        size: output side S in pixels.
        box_scale: the crop is ``square_box(box, box_scale)``, unless the batch carries ``crop_box (B, 4)``
            (set by the training augmentation, ``hpe_bench.augment``): then exactly that box is cropped, so the
            face-box label ``box`` can stay the face box while the crop is jittered.
        grayscale: convert RGB to one channel (OpNet).
        mean, std: per-channel normalisation of the [0, 1] image (defaults: ImageNet for RGB,
            ``x - 0.5`` for grayscale, OpNet's convention).

    ``forward(batch)`` returns a dict:
        ``image (B, C, S, S)`` normalised crop (batch images: uint8 [0, 255] or float [0, 1]);
        ``box (B, 4)`` crop box in full-image pixels;
        ``A (B, 3, 3)`` full-image -> crop pixels; ``K (B, 3, 3)`` full-image intrinsics (fallback
        ``f = W + H`` where the sample has none); ``K_crop (B, 3, 3)`` = ``A @ K``; ``has_K (B,)``;
        ``bbox_info (B, 3)`` = ``((cx_box - cx) / f, (cy_box - cy) / f, side / f)`` (TRG's I_bbox).
    """

    def __init__(self, size: int = 128, box_scale: float = 1.2, grayscale: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.size, self.box_scale, self.grayscale = int(size), float(box_scale), bool(grayscale)
        channels = 1 if grayscale else 3
        mean = mean if mean is not None else ((0.5,) if grayscale else IMAGENET_MEAN)
        std = std if std is not None else ((1.0,) if grayscale else IMAGENET_STD)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"crop mean/std need {channels} values for grayscale={grayscale}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def full_intrinsics(self, batch: Mapping[str, Any]) -> Tensor:
        """``K (B, 3, 3)`` of the full images. Where a sample has no K: its ``K_fallback`` (the fallback of the
        original image, carried through dataset-side crops) if present, else the fallback of this image."""
        img = batch["image"]
        B, _, H, W = img.shape
        fallback = G.fallback_intrinsics(W, H).to(batch["K"]).expand(B, 3, 3)
        if "K_fallback" in batch:
            fallback = torch.where(batch["has_K_fallback"].view(B, 1, 1), batch["K_fallback"], fallback)
        return torch.where(batch["has_K"].view(B, 1, 1), batch["K"], fallback)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        img = batch["image"]
        img = img.float() / 255.0 if img.dtype == torch.uint8 else img
        if "crop_box" in batch:
            box = batch["crop_box"].to(img)
        else:
            box = G.square_box(batch["box"].to(img), self.box_scale)
        crop = G.crop_images(img, box, self.size)
        if self.grayscale:
            crop = KCol.rgb_to_grayscale(crop)
        crop = (crop - self.mean) / self.std
        K = self.full_intrinsics(batch).to(img)
        A = G.crop_transform(box, self.size)
        bbox_info = G.box_features(box, K)
        return {"image": crop, "box": box, "A": A, "K": K, "K_crop": A @ K, "has_K": batch["has_K"],
                "bbox_info": bbox_info}
