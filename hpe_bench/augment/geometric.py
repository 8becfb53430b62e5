"""Geometric augmentation: one image similarity/reflection per sample, every label moved with it exactly.

``warp_batch`` applies a map ``S`` to a batch: the image is warped with kornia ``warp_affine(align_corners=True)``
(the convention of ``geometry.crop_images``), the labels by ``geometry.transform_labels`` (the one implementation
of the label rules, shared with the dataset-side working crop; table in docs/augmentation.md).

Two recipes sample the maps: ``OpNetRoiAffine`` (OpNet paper Sec. 2.3) and ``TRGCropAugment`` (TRG). Both
build a square region of interest (centre, side, angle, mirror) and warp it either onto a canvas of
``out_size`` pixels (the model's crop size: one resampling, crop box = the whole canvas) or, when
``out_size`` is None, within an image of the input size (scale 1, rotation/flip about the ROI centre).
They set ``crop_box``, which ``CropInput`` crops instead of its own box, so the face-box label stays the face box.
"""
from __future__ import annotations

import math
from typing import Any

import kornia.geometry.transform as KT
import torch
from torch import Tensor

from .. import geometry as G
from .base import BatchAugment, bernoulli, image_as_float, uniform


def warp_batch(batch: dict[str, Any], S: Tensor, out_size: int | tuple[int, int] | None = None,
               crop_box: Tensor | None = None) -> dict[str, Any]:
    """New batch with the image warped by ``S (B, 3, 3)`` (a similarity or reflection) and every label moved
    by ``geometry.transform_labels``.

    ``out_size``: output image size (``int`` or ``(w, h)``; None keeps the input size). ``crop_box (B, 4)``:
    sets the batch's crop box (else an existing one is mapped like ``box``). The image becomes float [0, 1].
    Absent labels (``has_<field>`` False) stay as they were.
    """
    img = batch["image"]
    _, _, H, W = img.shape
    ow, oh = (W, H) if out_size is None else ((out_size, out_size) if isinstance(out_size, int) else out_size)
    S = S.to(device=img.device, dtype=torch.float32)
    out = G.transform_labels(batch, S, (W, H))
    out["image"] = KT.warp_affine(image_as_float(img), S[:, :2, :], (oh, ow), mode="bilinear",
                                  padding_mode="zeros", align_corners=True)
    if crop_box is not None:
        out["crop_box"] = crop_box.to(S)
    return out


def roi_similarity(centre: Tensor, side: Tensor, angle: Tensor, mirror: Tensor, image_hw: tuple[int, int],
                   out_size: int | None = None) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Map a rotated square ROI (``centre (B, 2)``, ``side (B,)``, ``angle (B,)`` rad, ``mirror (B,)``) upright
    -> ``(S (B, 3, 3), crop_box (B, 4), (w, h))`` of the output image.

    ``out_size`` S: the ROI fills an S x S canvas (``crop_box = (0, 0, S, S)``, the ROI centre at ``S/2`` as
    in ``geometry.crop_transform``). None: scale 1 about the ROI centre in an image of ``image_hw``;
    ``crop_box`` the upright ROI square.
    """
    if out_size is None:
        scale, centre_out = torch.ones_like(side), centre
        crop_box = torch.cat([centre - side[:, None] / 2, centre + side[:, None] / 2], -1)
        size = (image_hw[1], image_hw[0])
    else:
        scale = out_size / side
        centre_out = torch.full_like(centre, out_size / 2.0)
        crop_box = centre.new_tensor([0.0, 0.0, out_size, out_size]).expand(len(centre), 4)
        size = (int(out_size), int(out_size))
    return G.similarity_transform(centre, centre_out, scale, angle, mirror), crop_box, size


class _RoiAugment(BatchAugment):
    def __init__(self, out_size: int | None):
        super().__init__()
        self.out_size = None if out_size is None else int(out_size)

    def apply(self, batch: dict[str, Any], params: dict[str, Tensor]) -> dict[str, Any]:
        """``params``: ``centre (B, 2)``, ``side (B,)``, ``angle (B,)`` radians, ``mirror (B,)`` bool."""
        img = batch["image"]
        S, crop_box, size = roi_similarity(params["centre"].float(), params["side"].float(), params["angle"].float(),
                                           params["mirror"], tuple(img.shape[-2:]), self.out_size)
        return warp_batch(batch, S, size, crop_box)


class OpNetRoiAffine(_RoiAugment):
    """OpNet's ROI augmentation (paper Sec. 2.3, ``shared/reference/opnet.md``).

    ROI: square of side ``max(w, h) * scale`` with ``scale = scale_mean + clip(N(0, scale_std^2), +-scale_clip)``,
    centred at the box centre plus ``(0.5 relu(side - w) + 0.3 w) t_x`` (likewise y) with
    ``t = clip(N(0, offset_std^2), +-offset_clip)``: at |t| <= 1 at least 70 % of the box stays inside.
    Rotation: ``rotation="uniform"`` (paper) U(-max, max) degrees; ``"code"`` (reference code) 0 with
    probability 2/3, else U(-max, max); plus +-90 degrees with probability ``rot90_prob``. Mirror with
    ``mirror_prob``. ``out_size``: see ``roi_similarity`` (the model's crop size: one resampling).
    """

    def __init__(self, out_size: int | None = None, scale_mean: float = 1.1, scale_std: float = 0.1,
                 scale_clip: float = 0.5, offset_std: float = 0.5, offset_clip: float = 1.0,
                 rotation: str = "uniform", max_rotation_deg: float = 30.0, rot90_prob: float = 0.01,
                 mirror_prob: float = 0.5):
        super().__init__(out_size)
        if rotation not in ("uniform", "code"):
            raise ValueError(f"augment.rotation must be 'uniform' (paper) or 'code', got {rotation!r}")
        self.scale_mean, self.scale_std, self.scale_clip = scale_mean, scale_std, scale_clip
        self.offset_std, self.offset_clip = offset_std, offset_clip
        self.rotation, self.max_rotation = rotation, math.radians(max_rotation_deg)
        self.rot90_prob, self.mirror_prob = rot90_prob, mirror_prob

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        box = batch["box"].float()
        B, dev = len(box), box.device
        wh = box[:, 2:] - box[:, :2]
        noise = torch.randn(B, generator=generator, device=dev) * self.scale_std
        side = wh.amax(1) * (self.scale_mean + noise.clamp(-self.scale_clip, self.scale_clip))
        t = (torch.randn(B, 2, generator=generator, device=dev) * self.offset_std).clamp(-self.offset_clip,
                                                                                        self.offset_clip)
        offset = (0.5 * torch.relu(side[:, None] - wh) + 0.3 * wh) * t
        angle = uniform(generator, B, -self.max_rotation, self.max_rotation, dev)
        if self.rotation == "code":
            angle = torch.where(bernoulli(generator, B, 2.0 / 3.0, dev), torch.zeros_like(angle), angle)
        sign = torch.where(bernoulli(generator, B, 0.5, dev), 1.0, -1.0)
        angle = angle + bernoulli(generator, B, self.rot90_prob, dev).float() * sign * (math.pi / 2)
        return {"centre": (box[:, :2] + box[:, 2:]) / 2 + offset, "side": side, "angle": angle,
                "mirror": bernoulli(generator, B, self.mirror_prob, dev)}


class TRGCropAugment(_RoiAugment):
    """TRG's geometric augmentation (``shared/reference/trg.md``): the model's crop ``square_box(box,
    box_scale)`` (side b) with its centre jittered by U(-centre_jitter, centre_jitter) b per axis and its side
    scaled by U(scale_range); in-plane rotation U(-max_rotation_deg, max_rotation_deg) with probability
    ``rotation_prob``; horizontal flip with ``flip_prob`` (dense vertices through the derived permutation).
    ``box_scale`` must equal the model crop's ``box_scale``.
    """

    def __init__(self, out_size: int | None = None, box_scale: float = 1.2, centre_jitter: float = 0.15,
                 scale_range: tuple[float, float] = (0.95, 1.05), max_rotation_deg: float = 30.0,
                 rotation_prob: float = 1.0, flip_prob: float = 0.5):
        super().__init__(out_size)
        self.box_scale, self.centre_jitter = float(box_scale), float(centre_jitter)
        self.scale_range = tuple(float(x) for x in scale_range)
        self.max_rotation, self.rotation_prob = math.radians(max_rotation_deg), float(rotation_prob)
        self.flip_prob = float(flip_prob)

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        crop = G.square_box(batch["box"].float(), self.box_scale)
        B, dev = len(crop), crop.device
        b = crop[:, 2] - crop[:, 0]
        centre = (crop[:, :2] + crop[:, 2:]) / 2
        centre = centre + uniform(generator, (B, 2), -self.centre_jitter, self.centre_jitter, dev) * b[:, None]
        side = b * uniform(generator, B, *self.scale_range, dev)
        angle = uniform(generator, B, -self.max_rotation, self.max_rotation, dev)
        angle = angle * bernoulli(generator, B, self.rotation_prob, dev).float()
        return {"centre": centre, "side": side, "angle": angle, "mirror": bernoulli(generator, B, self.flip_prob, dev)}
