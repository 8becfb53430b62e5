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
        mapping, resize, bbox_reference, quantize: the input conventions of the authors' code, for their
            released weights (``model=opnet_code`` / ``trg_code``; rules in ``geometry.reference_code``).
            ``mapping``: ``"corner"`` (hpe_bench), ``"pixel_edge"`` (OpNet code: integer window, pixel edges
            onto pixel edges, its normalised frame) or ``"trg_code"`` (image warped by (S - 1) / b, frame S / b).
            ``resize``: ``"bilinear"`` or ``"opnet_code"`` (OpenCV area resize when the window is >= S px, else
            linear; needs ``mapping="pixel_edge"``). ``bbox_reference``: I_bbox relative to K's principal point
            or to the ``"image_centre"`` (TRG code). ``quantize``: round the crop to uint8 levels as the code's
            uint8 pipeline does.

    ``forward(batch)`` returns a dict:
        ``image (B, C, S, S)`` normalised crop (batch images: uint8 [0, 255] or float [0, 1]);
        ``box (B, 4)`` crop box in full-image pixels;
        ``A (B, 3, 3)`` full-image -> crop pixels; ``K (B, 3, 3)`` full-image intrinsics (fallback
        ``f = W + H`` where the sample has none); ``K_crop (B, 3, 3)`` = ``A @ K``; ``has_K (B,)``;
        ``bbox_info (B, 3)`` = ``((cx_box - cx) / f, (cy_box - cy) / f, side / f)`` (TRG's I_bbox);
        ``image_size (B, 2)`` = ``(W, H)`` of the batch's images (after any dataset-side working crop).
    With a non-default ``mapping``, ``A`` maps onto the crop frame the network's coordinates live in, which
    the code's own image warp misses by a fraction of a pixel (``geometry.reference_code``).
    """

    def __init__(self, size: int = 128, box_scale: float = 1.2, grayscale: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 mapping: str = "corner", resize: str = "bilinear", bbox_reference: str = "principal_point",
                 quantize: bool = False):
        super().__init__()
        for name, value, allowed in (("mapping", mapping, G.CROP_MAPPINGS), ("resize", resize, G.RESIZE_RULES),
                                     ("bbox_reference", bbox_reference, G.BBOX_REFERENCES)):
            if value not in allowed:
                raise ValueError(f"model.crop.{name} must be one of {allowed}, got {value!r}")
        if resize == "opnet_code" and mapping != "pixel_edge":
            raise ValueError("model.crop.resize='opnet_code' needs model.crop.mapping='pixel_edge' (integer windows)")
        self.mapping, self.resize, self.bbox_reference, self.quantize = mapping, resize, bbox_reference, bool(quantize)
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
        """``K (B, 3, 3)`` of the full images (``geometry.image_intrinsics``: where a sample has no K, its
        ``K_fallback`` -- the fallback of the original image, carried through dataset-side crops -- if present,
        else the fallback of this image)."""
        B, _, H, W = batch["image"].shape
        return G.image_intrinsics(batch.get("K"), batch.get("has_K"), (W, H), batch.get("K_fallback"),
                                  batch.get("has_K_fallback"), batch_size=B, device=batch["image"].device)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        img = batch["image"]
        img = img.float() / 255.0 if img.dtype == torch.uint8 else img
        B, _, H, W = img.shape
        if self.mapping == "corner":
            if "crop_box" in batch:
                box = batch["crop_box"].to(img)
            else:
                box = G.square_box(batch["box"].to(img), self.box_scale)
            crop = G.crop_images(img, box, self.size)
            A = G.crop_transform(box, self.size)
        else:
            source, scale = (batch["crop_box"], 1.0) if "crop_box" in batch else (batch["box"], self.box_scale)
            box, A, warp = G.crop_window_maps(source.to(img), scale, self.size, self.mapping)
            if self.resize == "opnet_code":
                crop = G.opnet_code_crop(img, box + 0.5, self.size, self.quantize)
            else:
                crop = G.warp_crop(img, warp, self.size)
        if self.quantize and self.resize != "opnet_code":
            crop = (crop * 255.0).round() / 255.0
        if self.grayscale:
            crop = KCol.rgb_to_grayscale(crop)
        crop = (crop - self.mean) / self.std
        K = self.full_intrinsics(batch).to(img)
        image_size = torch.tensor([float(W), float(H)], dtype=img.dtype, device=img.device).expand(B, 2)
        if self.bbox_reference == "principal_point":
            bbox_info = G.box_features(box, K)
        else:
            bbox_info = G.box_features_reference(box, K, self.bbox_reference, image_size)
        return {"image": crop, "box": box, "A": A, "K": K, "K_crop": A @ K, "has_K": batch["has_K"],
                "bbox_info": bbox_info, "image_size": image_size}
