"""Run length and learning-rate schedules expressed as fractions of it.

A preset states its length once, in its paper's unit: epochs (``trainer.max_epochs``, TRG) or training samples
(``model.total_samples``, OpNet; ``max_steps_for_samples`` turns it into ``trainer.max_steps`` at fit start).
Milestones and the SWA start are fractions of the resulting number of optimizer steps: the factories here take
``total_steps`` (and ``samples_per_step``), which ``HeadPoseModule.configure_optimizers`` fills from
``trainer.estimated_stepping_batches`` (and ``global_batch_size``). A YAML file cannot compute ``2/3 * max_steps``.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def milestone_schedule(optimizer: torch.optim.Optimizer, total_steps: int, fractions: Sequence[float],
                       gamma: float = 0.1) -> torch.optim.lr_scheduler.MultiStepLR:
    """The lr multiplied by ``gamma`` after each fraction of training in ``fractions`` (e.g. 1/3 and 2/3 of 30
    epochs: epochs 10 and 20).

    A per-step ``MultiStepLR`` with milestones ``round(fraction * total_steps)``. ``HeadPoseModule`` fills
    ``total_steps`` from ``trainer.estimated_stepping_batches``, so the milestones follow ``max_epochs``,
    ``max_steps`` or ``model.total_samples``, the device count and gradient accumulation.
    """
    milestones = [max(1, int(round(float(f) * int(total_steps)))) for f in fractions]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def paper_step_schedule(optimizer: torch.optim.Optimizer, total_steps: int, fraction: float = 2.0 / 3.0,
                        gamma: float = 0.1) -> torch.optim.lr_scheduler.MultiStepLR:
    """TRG's schedule: the lr divided by 10 (``gamma``) once, after ``fraction`` (2/3) of training
    (``milestone_schedule`` with one milestone)."""
    return milestone_schedule(optimizer, total_steps, [fraction], gamma)


def global_batch_size(trainer) -> int:
    """Samples consumed per optimizer step over all processes: the datamodule's per-process ``batch_size``
    x ``trainer.world_size`` x ``trainer.accumulate_grad_batches`` (each DDP process loads its own batch)."""
    dm = getattr(trainer, "datamodule", None)
    per_process = getattr(dm, "batch_size", None)
    if per_process is None:
        raise ValueError("a samples-counted schedule needs the datamodule's batch_size (config key data.batch_size)")
    return int(per_process) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)


def opnet_lr_factor(samples: float, total_samples: float, warmup_fraction: float = 1.0 / 20.0,
                    decay_fraction: float = 0.5, gamma: float = 0.1) -> float:
    """OpNet's LR multiplier after ``samples`` training samples of a run of ``total_samples`` (N):
    linear ramp ``samples / (N/20)`` up to 1, then 1, then ``gamma`` (1/10) from ``N/2`` on."""
    if samples >= decay_fraction * total_samples:
        return gamma
    warmup = warmup_fraction * total_samples
    return 1.0 if warmup <= 0 else min(1.0, samples / warmup)


def max_steps_for_samples(trainer, total_samples: int) -> int:
    """Limit the fit to ``total_samples`` training samples: set the trainer's ``max_steps`` to
    ``ceil(total_samples / global batch)`` and return the step limit in force.

    Called by ``HeadPoseModule.setup`` at fit start, when ``trainer.world_size`` (devices x nodes, whatever
    ``devices: auto`` became), the datamodule's batch size and ``accumulate_grad_batches`` are known and the
    same on every process, so every DDP process sets the same limit without communicating; a config resolver
    could not know the device count. A ``trainer.max_steps`` that ends the run earlier (e.g. ``debug=default``)
    stays, as Lightning treats ``max_steps`` and ``max_epochs``: training stops at the first limit reached, and
    the schedules, fractions of ``estimated_stepping_batches``, follow the shorter run.
    """
    if int(total_samples) <= 0:
        raise ValueError(f"model.total_samples must be positive, got {total_samples}")
    steps = math.ceil(int(total_samples) / global_batch_size(trainer))
    current = int(trainer.max_steps)
    if 0 <= current < steps:
        log.info("trainer.max_steps=%d ends the run before model.total_samples=%d (%d steps)", current,
                 int(total_samples), steps)
        return current
    trainer.fit_loop.epoch_loop.max_steps = steps  # Trainer.max_steps reads it; set before configure_optimizers
    return steps


def opnet_schedule(optimizer: torch.optim.Optimizer, total_steps: int, samples_per_step: int,
                   warmup_fraction: float = 1.0 / 20.0, decay_fraction: float = 0.5,
                   gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """OpNet's schedule counted in samples (paper: N = 15 M): warm-up over N/20, lr/10 at N/2.

    A per-step ``LambdaLR``; the lr used by optimizer step ``k`` (0-based) is the factor at the samples seen
    after it, ``(k + 1) * samples_per_step``, so the first step does not run at lr 0. ``samples_per_step`` is
    the global batch (``global_batch_size``; ``HeadPoseModule`` fills it and ``total_steps``), which keeps the
    schedule the same under DDP or gradient accumulation. N = ``total_steps * samples_per_step``: the run's
    length (``model.total_samples`` rounded up to whole steps, or ``trainer.max_steps`` global batches).
    """
    b = int(samples_per_step)
    N = int(total_steps) * b
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: opnet_lr_factor((k + 1) * b, N, warmup_fraction, decay_fraction, gamma))
