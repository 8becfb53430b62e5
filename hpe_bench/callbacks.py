"""Lightning callbacks of the suite."""
from __future__ import annotations

import logging
import os
import time
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


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``: interpreter start-up and imports included; elsewhere
    since this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


class TimeBudget(L.Callback):
    """Fit the run's length to a wall-clock budget, measured at the start of training on the machine it runs on.

    A step-counted recipe cut short by ``trainer.max_time`` has not annealed: its learning rate is still high when
    it stops. Instead, after ``warmup_steps`` steps this times the next ``measure_steps`` (loading, augmentation,
    the step, the optimizer: everything between two batches), and sets ``trainer.max_steps`` to what fits until
    ``seconds`` after the process started, less ``reserve_seconds`` for testing and writing the outputs, at most
    the configured ``trainer.max_steps``. The LR schedule is rebuilt for that length
    (``HeadPoseModule.replan_schedule``), so it anneals fully on a slow CPU too. At each validation end the plan
    is checked again with the step and validation times measured so far and shortened if it would overrun.
    The plan and its measurements are logged and kept in ``plan`` (the run writes it to metrics.json).
    """

    def __init__(self, seconds: float, reserve_seconds: float = 45.0, warmup_steps: int = 10,
                 measure_steps: int = 40, min_steps: int = 1):
        self.seconds, self.reserve = float(seconds), float(reserve_seconds)
        self.warmup, self.measure, self.min_steps = int(warmup_steps), int(measure_steps), int(min_steps)
        self.plan: dict[str, Any] | None = None
        self._mark: tuple[int, float] | None = None
        self._limit: int | None = None
        self._val_start: float | None = None
        self._val_seconds: list[float] = []
        self._train_seconds, self._train_steps = 0.0, 0  # between consecutive training batches, after warm-up
        self._last: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._limit = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else None
        if self.warmup <= int(trainer.global_step):  # no warm-up (or resumed past it): measure from here
            self.warmup = int(trainer.global_step)
            self._mark, self._last = (self.warmup, time.monotonic()), time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now, step = time.monotonic(), int(trainer.global_step)
        if self._last is not None and step > self.warmup:
            self._train_seconds += now - self._last
            self._train_steps += 1
        self._last = now
        if step == self.warmup:
            self._mark = (step, now)
        elif self._mark is not None and self.plan is None and step >= self._mark[0] + self.measure:
            self._replan(trainer, pl_module, "measured")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is None or trainer.sanity_checking:
            return
        self._val_seconds.append(time.monotonic() - self._val_start)
        self._last = None  # the validation pass is not a training step
        if self.plan is not None:
            self._replan(trainer, pl_module, "validation", shrink_only=True)

    def _replan(self, trainer: L.Trainer, pl_module: L.LightningModule, why: str, shrink_only: bool = False) -> None:
        step = int(trainer.global_step)
        measured = max(1, self._train_steps)
        per_step = self._train_seconds / measured
        left = self.seconds - self.reserve - process_age()
        # validation passes still to come, each as long as the ones measured (none yet: 0)
        val = sum(self._val_seconds) / len(self._val_seconds) if self._val_seconds else 0.0
        per_epoch = max(1, int(trainer.num_training_batches)) * max(1, int(trainer.check_val_every_n_epoch or 1))
        steps = max(0, int(left / per_step)) if per_step > 0 else 0
        if val > 0:  # s steps take s * per_step + (s / per_epoch) * val seconds
            steps = max(0, int(left / (per_step + val / per_epoch)))
        total = max(self.min_steps, step + steps)
        if self._limit is not None:
            total = min(total, self._limit)
        current = int(trainer.max_steps)
        if shrink_only and total >= current:  # on plan: record the check, keep the decision
            self.plan["last_check"] = {"step": step, "seconds_per_step": per_step, "validation_seconds": val,
                                       "fits_steps": total}
            return
        if total != current and abs(total - current) > max(2, 0.01 * current) or self.plan is None:
            trainer.fit_loop.epoch_loop.max_steps = total
            pl_module.replan_schedule(total)
        self.plan = {"seconds": self.seconds, "reserve_seconds": self.reserve, "seconds_per_step": per_step,
                     "validation_seconds": val, "planned_at_step": step, "max_steps": int(trainer.max_steps),
                     "configured_max_steps": self._limit, "why": why}
        log.info("time budget (%s): %.3f s/step over %d steps, %.0f s left of %.0f s (%.0f s kept for testing) "
                 "-> trainer.max_steps = %d (configured %s)", why, per_step, measured, left, self.seconds,
                 self.reserve, trainer.max_steps, self._limit)
