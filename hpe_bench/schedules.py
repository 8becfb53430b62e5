"""Learning-rate schedules expressed as fractions of the run length.

A YAML file cannot compute ``2/3 * max_steps``; these factories take ``total_steps``, which
``HeadPoseModule.configure_optimizers`` fills from ``trainer.estimated_stepping_batches``.
"""
from __future__ import annotations

import torch


def paper_step_schedule(optimizer: torch.optim.Optimizer, total_steps: int, fraction: float = 2.0 / 3.0,
                        gamma: float = 0.1) -> torch.optim.lr_scheduler.MultiStepLR:
    """TRG's schedule: the lr divided by 10 (``gamma``) once, after ``fraction`` (2/3) of training.

    A per-step ``MultiStepLR`` with the one milestone ``round(fraction * total_steps)``. ``HeadPoseModule``
    fills ``total_steps`` from ``trainer.estimated_stepping_batches``, so the milestone follows ``max_steps``
    (or ``max_epochs``) and gradient accumulation; a plain YAML cannot compute ``2/3 * max_steps``.
    """
    milestone = max(1, int(round(fraction * int(total_steps))))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=gamma)


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


def run_length_samples(total_steps: int, samples_per_step: int, total_samples: int | None = None) -> int:
    """N, the run length in samples: ``total_samples`` when configured, else ``total_steps x samples_per_step``."""
    if total_samples is not None:
        if int(total_samples) <= 0:
            raise ValueError(f"total_samples must be positive, got {total_samples}")
        return int(total_samples)
    return int(total_steps) * int(samples_per_step)


def opnet_schedule(optimizer: torch.optim.Optimizer, total_steps: int, samples_per_step: int,
                   total_samples: int | None = None, warmup_fraction: float = 1.0 / 20.0,
                   decay_fraction: float = 0.5, gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """OpNet's schedule counted in samples (paper: N = 15 M): warm-up over N/20, lr/10 at N/2.

    A per-step ``LambdaLR``; the lr used by optimizer step ``k`` (0-based) is the factor at the samples seen
    after it, ``(k + 1) * samples_per_step``, so the first step does not run at lr 0. ``samples_per_step`` is
    the global batch (``global_batch_size``; ``HeadPoseModule`` fills it and ``total_steps``), which keeps the
    schedule the same under DDP or gradient accumulation. N is ``total_samples`` (config) if set, else
    ``total_steps * samples_per_step``.
    """
    N = run_length_samples(total_steps, samples_per_step, total_samples)
    b = int(samples_per_step)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: opnet_lr_factor((k + 1) * b, N, warmup_fraction, decay_fraction, gamma))
