"""Stochastic weight averaging counted in samples (OpNet: equal average of the weights from 2N/3 on).

Lightning's ``StochasticWeightAveraging`` starts at an *epoch* and swaps its own LR schedule in; OpNet's
recipe needs a start in *samples* (the run is step-based, epochs are meaningless for mixed, resampled data)
and keeps its own schedule. ``SampleSWA`` keeps a ``torch.optim.swa_utils.AveragedModel`` of the network
(equal average of one snapshot per optimizer step; BatchNorm running statistics averaged the same way, as
the reference code does) and swaps the average in when training ends, so the test uses it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.optim.swa_utils import AveragedModel

from .schedules import global_batch_size

log = logging.getLogger(__name__)


class SampleSWA(L.Callback):
    """Equal-weight SWA of ``pl_module.<attr>`` starting after ``start_fraction * N`` training samples.

    Args:
        start_fraction: start of averaging as a fraction of the run length N (OpNet: 2/3).
        every_n_steps: take a snapshot every this many optimizer steps once averaging has started.
        attr: the submodule to average (``HeadPoseModule.net``).
        save_name: after the swap, also write a checkpoint of this name next to the ModelCheckpoint files
            (its ``last.ckpt`` is written before training ends, with the un-averaged weights); None: no file.
    """

    def __init__(self, start_fraction: float = 2.0 / 3.0, every_n_steps: int = 1, attr: str = "net",
                 save_name: str | None = "swa.ckpt"):
        if not 0.0 <= start_fraction < 1.0:
            raise ValueError(f"SampleSWA start_fraction must be in [0, 1), got {start_fraction}")
        self.start_fraction = float(start_fraction)
        self.every_n_steps, self.attr, self.save_name = max(1, int(every_n_steps)), attr, save_name
        self.averaged: AveragedModel | None = None
        self.start_step: int | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_step: int | None = None

    def setup_schedule(self, total_steps: int, samples_per_step: int) -> int:
        """First optimizer step count (``trainer.global_step`` after the step) whose weights are averaged:
        the first step after which at least ``start_fraction * N`` samples have been seen. N, the run length in
        samples, is ``total_steps x samples_per_step`` (``trainer.estimated_stepping_batches x global batch``, as
        ``opnet_schedule``)."""
        N = int(total_steps) * int(samples_per_step)
        self.start_step = max(1, math.ceil(self.start_fraction * N / samples_per_step))
        return self.start_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.setup_schedule(int(trainer.estimated_stepping_batches), global_batch_size(trainer))
        if self._pending_state is not None:  # resumed from a checkpoint taken while averaging
            self.averaged = AveragedModel(getattr(pl_module, self.attr), use_buffers=True)
            self.averaged.load_state_dict(self._pending_state)
            self._pending_state = None
        log.info("SWA: averaging from optimizer step %d on", self.start_step)

    def update(self, module: torch.nn.Module) -> None:
        """Add the current weights of ``module`` to the equal average."""
        if self.averaged is None:
            self.averaged = AveragedModel(module, use_buffers=True)
        self.averaged.update_parameters(module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps done (unchanged between accumulation micro-batches)
        if step < self.start_step or (step - self.start_step) % self.every_n_steps:
            return
        if self._last_step == step:  # later micro-batches of an accumulated step
            return
        self._last_step = step
        self.update(getattr(pl_module, self.attr))

    def swap_in(self, module: torch.nn.Module) -> None:
        """Load the averaged weights and buffers into ``module``."""
        module.load_state_dict(self.averaged.module.state_dict())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.averaged is None:
            log.warning("SWA: training ended before step %s; keeping the final weights", self.start_step)
            return
        self.swap_in(getattr(pl_module, self.attr))
        log.info("SWA: swapped in the average of %d snapshots", int(self.averaged.n_averaged))
        ckpt = trainer.checkpoint_callback
        if self.save_name and ckpt is not None and getattr(ckpt, "dirpath", None):
            trainer.save_checkpoint(str(Path(ckpt.dirpath) / self.save_name))

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": None if self.averaged is None else self.averaged.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("averaged")
