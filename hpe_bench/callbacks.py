"""Lightning callbacks of the suite."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch

from . import viz

log = logging.getLogger(__name__)


class PredictionImages(L.Callback):
    """At test time, draw predicted (solid) and ground-truth (thin) axes on the first ``num_images`` test
    images, save ``test_predictions.png`` in the run directory and log it to W&B when that logger is on.
    ``samples`` keeps (sample id, image) of the last test's drawings (W&B samples table: ``wandb_logging``)."""

    def __init__(self, num_images: int = 8, ncols: int = 4, filename: str = "test_predictions.png"):
        self.num_images, self.ncols, self.filename = num_images, ncols, filename
        self._done = False
        self.samples: list[tuple[str, np.ndarray]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done = False
        self.samples = []

    @torch.no_grad()
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._done or not trainer.is_global_zero or self.num_images <= 0:  # 0: no drawing
            return
        self._done = True
        n = min(self.num_images, batch["image"].shape[0])
        pred = pl_module({k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()})
        K = pl_module.crop.full_intrinsics(batch)[:n].cpu().numpy()
        tiles = []
        for i in range(n):
            img = batch["image"][i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            t_pred = pred["t"][i].cpu().numpy() if "t" in pred else None
            if t_pred is not None:
                img = viz.draw_axes(img, pred["R"][i].cpu().numpy(), t_pred, K[i], thickness=2)
            if bool(batch["has_R"][i]) and bool(batch["has_t"][i]):
                img = viz.draw_axes(img, batch["R"][i].cpu().numpy(), batch["t"][i].cpu().numpy(), K[i],
                                    thickness=1)
            img = viz.draw_box(img, batch["box"][i].cpu().numpy())
            tiles.append(img)
        self.samples = [(str(batch["sample_id"][i]), tile) for i, tile in enumerate(tiles)]
        grid = viz.make_grid(tiles, self.ncols)
        path = Path(trainer.default_root_dir) / self.filename
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="test/predictions", images=[grid],
                                 caption=["predicted axes thick, ground truth thin"])
                except Exception as err:  # noqa: BLE001 - image logging must never fail a test run
                    log.warning("could not log prediction images to %s: %s", type(lg).__name__, err)
