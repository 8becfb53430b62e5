"""What a run meets besides training: checks before its directory exists, a failure record, resumption, and a
multirun that finishes its other jobs when one fails (docs/running.md).

- ``RunGuard`` (a Hydra callback, conf/hydra/default.yaml): ``on_run_start`` runs ``preflight`` before Hydra
  creates the run directory, so a config error, a missing dataset root or a bad ``ckpt_path`` leaves no
  directory and no W&B run behind; ``on_multirun_end`` reports every failed job with its directory. Both
  end the command with exit status 1 through ``SystemExit`` (Hydra turns a callback's exceptions into warnings).
- ``run_task`` (the task function's body): preflight again per job (a sweep point's own values), then
  ``run.run``; a failure writes ``failure.json`` into the job directory; in a multirun the job returns so
  that the launcher goes on with the next one.

Validating in ``on_run_start`` rather than in ``__main__`` before ``hydra.main`` keeps Hydra's own composition,
overrides and error reporting; it only needs ``hydra.runtime.output_dir``, which this module computes the
way Hydra's ``run_job`` does.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from .preflight import UserError, as_user_error, preflight

log = logging.getLogger(__name__)
FAILURE_FILE = "failure.json"
_NOT_CONFIG = ("ckpt_path=",)  # overrides that may differ between a run and its resumption


@contextmanager
def _runtime(config: DictConfig, run_dir: str) -> Iterator[DictConfig]:
    """A copy of ``config`` whose ``${hydra:runtime.output_dir}`` resolves to ``run_dir`` (as ``run_job`` sets
    it), installed as the current Hydra config while the block runs."""
    cfg = copy.deepcopy(config)
    with open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(run_dir)
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(cfg)
    try:
        yield cfg
    finally:
        instance.cfg = previous


def _overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [o for o in OmegaConf.load(path) if not str(o).startswith(_NOT_CONFIG)]


def _stop(err: UserError) -> NoReturn:
    """End the command with ``err``'s message (its traceback under ``HYDRA_FULL_ERROR=1``) and exit status 1.

    Hydra turns an exception raised in a callback into a warning and carries on (``hydra/_internal/callbacks.py``);
    ``SystemExit`` is no ``Exception``, so it stops the command."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(err)
    else:
        sys.stderr.write(f"Error: {err}\n")
    sys.stderr.flush()
    raise SystemExit(1)


class RunGuard(Callback):
    """Hydra callback: preflight before the run directory exists; the failed jobs of a multirun at its end."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = str(OmegaConf.select(config, "hydra.run.dir"))
        try:
            with _runtime(config, run_dir) as cfg:
                ckpt = preflight(cfg, run_dir)
        except UserError as err:
            _stop(err)
        if ckpt is not None and cfg.get("train", True):
            old = _overrides(Path(run_dir) / ".hydra" / "overrides.yaml")
            new = [o for o in OmegaConf.to_container(config.hydra.overrides.task) if not o.startswith(_NOT_CONFIG)]
            if old and sorted(old) != sorted(new):
                log.warning("resuming %s with other overrides than it started with: %s (then) vs %s (now)",
                            run_dir, " ".join(old), " ".join(new))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if target.endswith("submitit_launcher.SlurmLauncher"):  # hydra/launcher=slurm: submitit follows the jobs
            from .launcher import use_squeue_without_accounting
            use_squeue_without_accounting()  # with squeue where sacct has no database (hpe_bench/launcher.py)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        failures = sorted(sweep_dir.rglob(FAILURE_FILE)) if sweep_dir.is_dir() else []
        if not failures:
            return
        jobs = sum(1 for _ in sweep_dir.rglob(".hydra/overrides.yaml"))
        lines = []
        for path in failures:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):  # an unreadable record still names its job
                record = {}
            lines.append(f"  {path.parent}: {record.get('error', '?')}: {record.get('message', '')}".rstrip())
        _stop(UserError(f"{len(failures)} of {jobs} multirun jobs failed (the others finished; each failed job's "
                        f"{FAILURE_FILE} holds its overrides and traceback):\n" + "\n".join(lines)))


def _multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _overrides_now() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def write_failure(run_dir: Path, err: BaseException) -> Optional[Path]:
    """``<run_dir>/failure.json``: the error, its message, the job's overrides, the traceback and the time."""
    from .outputs import write_json
    if not run_dir.is_dir():
        return None
    path = run_dir / FAILURE_FILE
    write_json(path, {
        "error": type(err).__name__, "message": str(err), "overrides": _overrides_now(),
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        "failed_utc": datetime.now(timezone.utc).isoformat(),
    })
    return path


_TERMINATED = False  # SIGTERM received in a SLURM job: SLURM is ending it (requeue, preemption, scancel)


def _watch_sigterm() -> None:
    """In a SLURM job, note a SIGTERM (then call the handler that was there: submitit's, Lightning's).

    ``scontrol requeue``, a preemption or ``scancel`` sends SIGTERM to every process of the job: helpers such as
    W&B's service die at once, so the run may fail with their error (``ConnectionResetError``) before
    Lightning stops it. Such a job is no failure of the run: ``run_task`` then exits without a failure record
    or a result, and SLURM requeues it (or it stays cancelled)."""
    import signal
    import threading
    if "SLURM_JOB_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_hpe_bench", False):
        return

    def handler(signum, frame):
        global _TERMINATED
        _TERMINATED = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: end the process
            raise SystemExit(128 + signum)

    handler._hpe_bench = True
    signal.signal(signal.SIGTERM, handler)


def run_task(cfg: DictConfig) -> Any:
    """Body of the Hydra task function: preflight, ``run.run``, and the failure record (module docstring)."""
    from .run import output_dir, run
    out = output_dir()
    _watch_sigterm()
    try:
        ckpt = preflight(cfg, out)
        if ckpt is not None:
            cfg.ckpt_path = str(ckpt)  # `last` -> the file, so that Lightning never falls back to a fresh start
        result = run(cfg)
        (out / FAILURE_FILE).unlink(missing_ok=True)  # a resumed run that now finished is no failure
        return result
    except Exception as err:
        if _TERMINATED:  # SLURM ends the job (requeue, preemption, scancel): the run did not fail
            log.warning("SLURM ended job %s (SIGTERM) during the run: %s: %s; no failure record",
                        os.environ.get("SLURM_JOB_ID"), type(err).__name__, err)
            raise SystemExit(143) from err
        user = as_user_error(err)
        write_failure(out, err)
        if _multirun():
            log.error("job failed, the multirun goes on (%s in %s): %s", type(err).__name__, out, err,
                      exc_info=user is None)
            return None
        if user is not None and user is not err:
            raise user from err
        raise
