"""What a run sends to its loggers beyond Lightning's ``train/*`` and ``val/*`` (docs/wandb.md).

``run.run`` calls three functions:

- ``prepare(trainer, tags)`` once the trainer exists: on a W&B run, the tags (``model=..``, ``data=..``,
  ``loss=..``, ``seed=..``; the group, the experiment name, comes from conf/logger/wandb.yaml) and a
  ``define_metric`` per registered metric so that ``val/<metric>`` summarises by its best value (min or max
  by ``METRICS[name].lower_is_better``) and its last;
- ``log_test(trainer, protocol, record, frame, images)`` after each tested protocol: every metric of its
  metrics file as ``test/<protocol>/<metric>`` (and the mean-pose reference as
  ``test/<protocol>/mean_pose/<metric>``) to every logger (CSV: ``csv/metrics.csv``; W&B: history and
  summary), and, on W&B, a histogram of each per-sample error and a table of the first test samples with
  their image (predicted axes thick, ground truth thin) and errors;
- ``finish(trainer)`` at the end of the run (and ``finish_leftover()`` at the start of the next), so that each
  job of a Hydra multirun is its own W&B run: Lightning's ``WandbLogger`` re-attaches to a W&B run still open
  in the process instead of starting another.

The protocol is always in the key (also for one protocol), so runs of one grid that test on different protocol
lists share their keys. Logging errors are warned about, never raised: the metrics files are the record.
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .metrics.per_sample import PER_SAMPLE_KEYS
from .metrics.registry import METRICS

log = logging.getLogger(__name__)

__all__ = ["prepare", "log_test", "finish", "finish_leftover", "test_metrics", "run_tags", "wandb_loggers",
           "TEST_PREFIX"]

TEST_PREFIX = "test"
TABLE_COLUMNS = ("geodesic_deg", "mae_r_deg", "mae_t_mm", "add_mm", "nme2d", "dense_mm")  # per-sample errors shown


def wandb_loggers(trainer: Any) -> list:
    """The trainer's Lightning ``WandbLogger``s (none when W&B is not configured)."""
    if "lightning.pytorch.loggers.wandb" not in sys.modules:
        return []
    from lightning.pytorch.loggers import WandbLogger
    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def run_tags(choices: Mapping[str, Any], seed: Any) -> list[str]:
    """``model=<option>``, ``data=<option>``, ``loss=<option>``, ``seed=<n>`` (those that are set)."""
    tags = [f"{k}={choices[k]}" for k in ("model", "data", "loss") if choices.get(k) not in (None, "null")]
    return tags + ([f"seed={seed}"] if seed is not None else [])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def test_metrics(protocol: str, record: Mapping[str, Any]) -> dict[str, float | int]:
    """``test/<protocol>/<metric>`` for every registered metric ``record`` (a metrics file) holds, counts as
    integers, plus ``test/<protocol>/mean_pose/<metric>`` for its mean-pose reference."""
    out: dict[str, float | int] = {}
    for prefix, values in (("", record), ("mean_pose/", record.get("mean_pose") or {})):
        for name, v in values.items():
            if name in METRICS and _finite(v):
                key = f"{TEST_PREFIX}/{protocol}/{prefix}{name}"
                out[key] = int(round(float(v))) if METRICS[name].is_count else float(v)
    return out


def prepare(trainer: Any, tags: Sequence[str]) -> None:
    """Tags and metric definitions of each W&B run of ``trainer`` (module docstring)."""
    if not trainer.is_global_zero:
        return
    for lg in wandb_loggers(trainer):
        try:
            run = lg.experiment
            run.tags = tuple(dict.fromkeys([*(run.tags or ()), *tags]))
            for name, spec in METRICS.items():
                if spec.is_count:
                    continue
                best = "min" if spec.lower_is_better else "max"
                run.define_metric(f"val/{name}", step_metric="trainer/global_step", summary=f"{best},last")
        except Exception as err:  # noqa: BLE001 - a logging problem must never fail a run
            log.warning("could not set up the W&B run (tags, metric summaries): %s", err)


def _image_table(protocol: str, frame: pd.DataFrame, images: Sequence[tuple[str, np.ndarray]]):
    import wandb
    errors = [c for c in TABLE_COLUMNS if c in frame and frame[c].notna().any()]
    table = wandb.Table(columns=["sample_id", "image", *errors])
    by_id = frame.set_index(frame["sample_id"].astype(str)) if len(frame) else frame
    for sample_id, tile in images:
        row = by_id.loc[str(sample_id)] if str(sample_id) in by_id.index else None
        values = [None if row is None or pd.isna(row[c]) else float(row[c]) for c in errors]
        table.add_data(str(sample_id), wandb.Image(tile, caption=f"{protocol}: predicted thick, truth thin"), *values)
    return table


def test_images(trainer: Any) -> list[tuple[str, np.ndarray]]:
    """(sample id, image) of the test samples the ``PredictionImages`` callback drew in the last test."""
    from .callbacks import PredictionImages
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, PredictionImages):
            return list(cb.samples)
    return []


def log_test(trainer: Any, protocol: str, record: Mapping[str, Any], frame: pd.DataFrame | None = None,
             images: Sequence[tuple[str, np.ndarray]] | None = None) -> dict[str, float | int]:
    """Log one protocol's test results (module docstring); returns the scalars logged. ``images``: (sample id,
    image) pairs for the samples table, by default those of the trainer's ``PredictionImages`` callback."""
    scalars = test_metrics(protocol, record)
    if not trainer.is_global_zero or not scalars:
        return scalars
    step = int(getattr(trainer, "global_step", 0))
    for lg in getattr(trainer, "loggers", []):
        try:
            lg.log_metrics(scalars, step=step)
            lg.save()  # CSVLogger writes its file on save
        except Exception as err:  # noqa: BLE001
            log.warning("could not log the %s test metrics to %s: %s", protocol, type(lg).__name__, err)
    for lg in wandb_loggers(trainer):
        try:
            import wandb
            run = lg.experiment
            run.summary.update(scalars)
            extra: dict[str, Any] = {}
            if frame is not None and len(frame):
                for name in PER_SAMPLE_KEYS:
                    values = frame[name].to_numpy(dtype=float) if name in frame else np.empty(0)
                    values = values[np.isfinite(values)]
                    if values.size:
                        extra[f"{TEST_PREFIX}/{protocol}/errors/{name}"] = wandb.Histogram(values)
            images = test_images(trainer) if images is None else images
            if images:
                extra[f"{TEST_PREFIX}/{protocol}/samples"] = _image_table(protocol, frame if frame is not None
                                                                           else pd.DataFrame(), images)
            if extra:
                run.log({**extra, "trainer/global_step": step})
        except Exception as err:  # noqa: BLE001
            log.warning("could not log the %s test histograms / samples table to W&B: %s", protocol, err)
    return scalars


def finish(trainer: Any) -> None:
    """End the W&B run of ``trainer`` (each multirun job is its own run)."""
    if not wandb_loggers(trainer):
        return
    finish_leftover()


def finish_leftover(exit_code: int | None = None) -> None:
    """Finish a W&B run still open in this process (a previous multirun job that failed before ``finish``)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as err:  # noqa: BLE001
        log.warning("could not finish the W&B run: %s", err)
