"""What a run needs to survive a cluster's job life cycle (docs/cluster.md): a SLURM job requeued after a
preemption or time-out (submitit's requeue, ``hydra/launcher=slurm``) resumes from its run directory's
``checkpoints/last.ckpt``, and its W&B run continues under the same id (stored in the run directory).
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from .outputs import write_json

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.json"  # {"id": ...}: the W&B run id every (re)start of this run directory uses


def requeued() -> bool:
    """True in a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0: preempted or timed out before)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def _global_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID"))


def fit_ckpt_path(cfg: DictConfig, run_dir: str | Path) -> Any:
    """``ckpt_path`` for ``trainer.fit``: the configured one; in a requeued SLURM job without one, ``"last"``
    when ``<run_dir>/checkpoints/last.ckpt`` exists (the same resume as ``ckpt_path=last``, docs/running.md)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None and requeued() and (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
        log.info("requeued SLURM job (restart %s): resuming from %s/checkpoints/last.ckpt",
                 os.environ.get("SLURM_RESTART_COUNT"), run_dir)
        return "last"
    return ckpt


def wandb_run_id(run_dir: str | Path) -> str:
    """The run directory's W&B id: read from ``wandb_id.json``, else a new one written there (global rank 0;
    other ranks log nothing to W&B)."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return str(json.loads(path.read_text())["id"])
    run_id = uuid.uuid4().hex[:12]
    if _global_rank_zero():
        write_json(path, {"id": run_id})
    return run_id


def keep_wandb_id(loggers: DictConfig | None, run_dir: str | Path) -> DictConfig | None:
    """``loggers`` (the ``logger`` config group) with every ``WandbLogger`` given the run directory's id and
    ``resume: allow``, so a resumed or requeued run appends to its W&B run instead of starting another.
    An ``id`` set in the config wins."""
    if not loggers:
        return loggers
    for node in loggers.values():  # in place: the nodes keep their interpolations (${experiment_name}, ...)
        if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("WandbLogger"):
            with open_dict(node):
                node.id = node.get("id") or wandb_run_id(run_dir)
                node.resume = node.get("resume") or "allow"
    return loggers


class RandomState(Callback):
    """Keeps the global random states (torch, numpy, Python) in every checkpoint and restores them on resume.

    Lightning's checkpoints hold weights, optimizer, schedule and loop counters but not the global generators,
    from which the training loader's shuffling, the on-device augmentations and dropout draw. Without them a run
    resumed from ``last.ckpt`` (``ckpt_path=last``, a requeued SLURM job) draws other numbers than it would have
    drawn uninterrupted. Restored at an epoch boundary, it continues exactly (``tests/test_slurm.py``); restored
    mid-epoch the loader still restarts its epoch (Lightning does not fast-forward a sampler).
    """

    KEY = "hpe_bench_rng_states"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = collect_random_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.KEY in checkpoint and trainer.state.fn == "fit":  # not when testing a checkpoint
            set_random_state(checkpoint[self.KEY])


def collect_random_state() -> dict[str, Any]:
    """torch's CPU, numpy's and Python's global generator states, as types ``torch.load(weights_only=True)``
    (Lightning's resume) reads: tensors, lists, numbers."""
    import random

    import numpy as np
    import torch
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": [int(version), list(internal), gauss]}


def set_random_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
