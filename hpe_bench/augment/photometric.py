"""Photometric augmentation on the float [0, 1] image (labels unchanged): OpNet's intensity set and noise,
TRG's colour jitter and mask patch. kornia functional ops with parameters drawn from ``BatchAugment``'s
generator, each op run only on the samples that draw it.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import kornia.enhance as KE
import kornia.filters as KF
import torch
from torch import Tensor

from .. import geometry as G
from .base import BatchAugment, bernoulli, image_as_float, uniform


def _apply_rows(x: Tensor, rows: Tensor, op: Callable[[Tensor, Tensor], Tensor], value: Tensor) -> Tensor:
    """``x`` with ``op(x[rows], value[rows])`` written to the selected rows (no work for unselected rows)."""
    idx = torch.nonzero(rows)[:, 0]
    if len(idx) == 0:
        return x
    x = x.clone()
    x[idx] = op(x[idx], value[idx])
    return x


def _bcast(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


class OpNetIntensity(BatchAugment):
    """OpNet's intensity augmentation (``shared/reference/opnet.md``), kornia semantics on [0, 1]:
    per sample ``num_ops`` of the 6 ops are picked (applied in the listed order), each then fires with its own
    probability: equalize; posterize to U{bits} bits; gamma ``x^g``, g ~ U(gamma); contrast ``x c``
    (kornia ``adjust_contrast``); brightness ``x + (b - 1)`` (kornia ``RandomBrightness``); 5x5 Gaussian blur
    with ``blur_sigma``. Then Gaussian noise of each ``(sigma, p)`` in ``noise`` (sigma in [0, 1] units).
    """

    def __init__(self, num_ops: int = 4, equalize_p: float = 0.2, posterize_bits: tuple[int, int] = (4, 6),
                 posterize_p: float = 0.01, gamma: tuple[float, float] = (0.5, 2.0), gamma_p: float = 0.2,
                 contrast: tuple[float, float] = (0.7, 1.5), contrast_p: float = 0.2,
                 brightness: tuple[float, float] = (0.7, 1.5), brightness_p: float = 0.2,
                 blur_sigma: float = 1.5, blur_kernel: int = 5, blur_p: float = 0.1,
                 noise: tuple = ((4 / 255, 0.5), (16 / 255, 0.1))):
        super().__init__()
        if not 0 <= num_ops <= 6:
            raise ValueError(f"augment.num_ops must be in [0, 6], got {num_ops}")
        self.num_ops = int(num_ops)
        self.probs = (equalize_p, posterize_p, gamma_p, contrast_p, brightness_p, blur_p)
        self.posterize_bits, self.gamma = tuple(int(b) for b in posterize_bits), tuple(gamma)
        self.contrast, self.brightness = tuple(contrast), tuple(brightness)
        self.blur_sigma, self.blur_kernel = float(blur_sigma), int(blur_kernel)
        self.noise = tuple((float(s), float(p)) for s, p in noise)

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        img = batch["image"]
        B, dev = img.shape[0], img.device
        picked = torch.rand(B, 6, generator=generator, device=dev).argsort(1)[:, :self.num_ops]
        chosen = torch.zeros(B, 6, dtype=torch.bool, device=dev).scatter_(1, picked, True)
        fire = torch.rand(B, 6, generator=generator, device=dev) < torch.tensor(self.probs, device=dev)
        lo, hi = self.posterize_bits
        return {
            "ops": chosen & fire,
            "bits": torch.randint(lo, hi + 1, (B,), generator=generator, device=dev),
            "gamma": uniform(generator, B, *self.gamma, dev),
            "contrast": uniform(generator, B, *self.contrast, dev),
            "brightness": uniform(generator, B, *self.brightness, dev),
            "noise_on": torch.stack([bernoulli(generator, B, p, dev) for _, p in self.noise], 1)
            if self.noise else torch.zeros(B, 0, dtype=torch.bool, device=dev),
            "noise": torch.randn((len(self.noise),) + tuple(img.shape), generator=generator, device=dev),
        }

    def apply(self, batch: dict[str, Any], params: dict[str, Tensor]) -> dict[str, Any]:
        x = image_as_float(batch["image"])
        ops = params["ops"]
        k, sig = self.blur_kernel, self.blur_sigma
        steps = (
            (lambda im, v: KE.equalize(im), params["gamma"]),
            (lambda im, v: KE.posterize(im, v), params["bits"]),
            (lambda im, v: KE.adjust_gamma(im, v), params["gamma"]),
            (lambda im, v: KE.adjust_contrast(im, v), params["contrast"]),
            (lambda im, v: KE.adjust_brightness(im, v - 1.0), params["brightness"]),
            (lambda im, v: KF.gaussian_blur2d(im, (k, k), (sig, sig)), params["gamma"]),
        )
        for j, (op, value) in enumerate(steps):
            x = _apply_rows(x, ops[:, j], op, value)
        for j, (sigma, _) in enumerate(self.noise):
            on = params["noise_on"][:, j].to(x)
            x = x + _bcast(on) * sigma * params["noise"][j]
        out = dict(batch)
        out["image"] = x.clamp(0.0, 1.0)
        return out


class ColorJitter(BatchAugment):
    """Colour jitter with torchvision's semantics (TRG: ``(0.3, 0.3, 0.2, 0.01)``), fixed order brightness,
    contrast, saturation, hue: brightness ``x b``, contrast blend with the mean grey, saturation blend with the
    grey image, factors ~ U(1 - v, 1 + v); hue shift ~ U(-h, h) turns."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.2, hue: float = 0.01,
                 p: float = 1.0):
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        B, dev = batch["image"].shape[0], batch["image"].device
        return {"on": bernoulli(generator, B, self.p, dev),
                "brightness": uniform(generator, B, 1 - self.brightness, 1 + self.brightness, dev),
                "contrast": uniform(generator, B, 1 - self.contrast, 1 + self.contrast, dev),
                "saturation": uniform(generator, B, 1 - self.saturation, 1 + self.saturation, dev),
                "hue": uniform(generator, B, -self.hue, self.hue, dev)}

    def apply(self, batch: dict[str, Any], params: dict[str, Tensor]) -> dict[str, Any]:
        def jitter(im: Tensor, i: Tensor) -> Tensor:
            im = (im * _bcast(params["brightness"][i])).clamp(0, 1)
            im = KE.adjust_contrast_with_mean_subtraction(im, params["contrast"][i])
            im = KE.adjust_saturation_with_gray_subtraction(im, params["saturation"][i])
            return KE.adjust_hue(im, params["hue"][i] * 2 * math.pi)

        x = image_as_float(batch["image"])
        rows = params["on"]
        out = dict(batch)
        out["image"] = _apply_rows(x, rows, jitter, torch.arange(len(rows), device=rows.device))
        return out


class MaskPatch(BatchAugment):
    """Random rectangular occluder inside the crop (TRG's "mask patch"; its size rule is not published):
    with probability ``p`` a rectangle of sides U(size_range) x crop side, centre uniform in the crop, filled
    with a random uniform colour. The crop is ``crop_box`` when set (run it after the geometric step), else
    ``square_box(box, box_scale)``. Labels are unchanged (occluded landmarks keep their positions)."""

    def __init__(self, p: float = 0.5, size_range: tuple[float, float] = (0.1, 0.4), box_scale: float = 1.2):
        super().__init__()
        self.p, self.size_range, self.box_scale = float(p), tuple(size_range), float(box_scale)

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        B, dev = batch["image"].shape[0], batch["image"].device
        crop = batch["crop_box"] if "crop_box" in batch else G.square_box(batch["box"], self.box_scale)
        crop = crop.float().to(dev)
        side = (crop[:, 2:] - crop[:, :2])
        centre = crop[:, :2] + torch.rand(B, 2, generator=generator, device=dev) * side
        half = uniform(generator, (B, 2), *self.size_range, dev) * side / 2
        return {"on": bernoulli(generator, B, self.p, dev), "rect": torch.cat([centre - half, centre + half], 1),
                "colour": torch.rand(B, 3, generator=generator, device=dev)}

    def apply(self, batch: dict[str, Any], params: dict[str, Tensor]) -> dict[str, Any]:
        x = image_as_float(batch["image"])
        _, C, H, W = x.shape
        ys = torch.arange(H, device=x.device, dtype=x.dtype).view(1, H, 1)
        xs = torch.arange(W, device=x.device, dtype=x.dtype).view(1, 1, W)
        r = params["rect"].to(x)
        inside = ((xs >= r[:, 0, None, None]) & (xs <= r[:, 2, None, None]) & (ys >= r[:, 1, None, None])
                  & (ys <= r[:, 3, None, None]) & params["on"].view(-1, 1, 1))
        colour = params["colour"].to(x)[:, :C, None, None]
        out = dict(batch)
        out["image"] = torch.where(inside[:, None], colour, x)
        return out
