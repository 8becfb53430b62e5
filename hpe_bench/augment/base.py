"""Shared machinery of the on-device batch augmentations: the random generator and composition."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def image_as_float(image: Tensor) -> Tensor:
    """``(B, C, H, W)`` uint8 [0, 255] or float [0, 1] -> float [0, 1] (``CropInput`` accepts both)."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


class BatchAugment(nn.Module):
    """Base of the augmentations: ``forward(batch) -> new batch`` (the input dict and its tensors are never
    modified in place), parameters drawn on the batch's device from one ``torch.Generator`` per call,
    seeded from torch's global CPU generator, so ``lightning.seed_everything`` makes runs reproducible.

    Subclasses implement ``sample(batch, generator) -> params`` and ``apply(batch, params) -> batch``;
    tests call ``apply`` with fixed parameters.
    """

    def generator(self, device: torch.device) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        return torch.Generator(device=device).manual_seed(seed)

    def sample(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply(self, batch: dict[str, Any], params: dict[str, Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.apply(batch, self.sample(batch, self.generator(batch["image"].device)))


class Compose(nn.Module):
    """Apply named steps (augmentations ``forward(batch) -> batch``) in the order given; ``None`` steps are
    skipped, so a config can switch one off by name (``intensity: null``)."""

    def __init__(self, **steps: nn.Module | None):
        super().__init__()
        self.steps = nn.ModuleDict({k: v for k, v in steps.items() if v is not None})

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        for step in self.steps.values():
            batch = step(batch)
        return batch


def uniform(generator: torch.Generator, shape, lo: float, hi: float, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def bernoulli(generator: torch.Generator, shape, p: float, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device) < p
