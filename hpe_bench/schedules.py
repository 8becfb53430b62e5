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
