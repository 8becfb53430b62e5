"""The run-output contract (docs/outputs.md): metrics.json, predictions.parquet, run_info.json.

Every file is written atomically: to a temporary file in the same directory, flushed and fsynced, then
renamed over the final name, so a crash never leaves a half-written result behind.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from .geometry import orthonormality_error, project_to_so3

AXES = ("x", "y", "z")


class OutputError(OSError):
    """An output location is unusable; the message names the path and the config key."""


def check_writable(directory: str | Path, key: str = "hydra.run.dir") -> Path:
    """Create ``directory`` if needed and prove it writable, or raise ``OutputError`` naming ``key``."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(f"output directory {str(path)!r} (config key {key}) is not writable: {err}") from err
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path`` (with the mode a plain
    write gives, ``0o666 & ~umask``: ``filemode.share``), else removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        from .filemode import share
        share(tmp)  # mkstemp's 0600 -> the umask's mode (0644 by default): results a group can read
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.item() if obj.ndim == 0 else obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def scored_pose(pred: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """What is scored and written: ``pred`` with ``R`` as float64 proper rotations and ``t`` as float64.

    A net builds ``R`` in float32 (also under mixed precision: ``models.mixed_precision``), orthonormal to
    ~1e-7; its nearest rotation in float64 (``geometry.project_to_so3``) moves it by as much and makes the
    predictions file's contract exact: ``|R^T R - I| <= 1e-6``, ``det R = +1``, so the metrics and anyone
    recomputing them from predictions.parquet read the same matrices. Rows with a non-finite entry stay as they
    are (NaN errors, never dropped). Returns the new dict and the largest orthonormality error before
    projection (``geometry.orthonormality_error``; ``inf`` for a reflection), which callers report when it is
    more than rounding.
    """
    out = dict(pred)
    worst = 0.0
    if pred.get("R") is not None:
        R = torch.as_tensor(pred["R"]).detach().to(torch.float64)
        finite = torch.isfinite(R).flatten(1).all(1)
        if bool(finite.any()):
            err = orthonormality_error(R[finite])
            worst = float(err.max())
            R = R.clone()
            R[finite] = project_to_so3(R[finite])
        out["R"] = R
    if pred.get("t") is not None:
        out["t"] = torch.as_tensor(pred["t"]).detach().to(torch.float64)
    return out, worst


def prediction_columns(pred: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                       errors: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Per-sample columns of predictions.parquet for one batch (NaN where a value is absent), float64: pass
    predictions through ``scored_pose`` first so the file holds exactly what was scored.

    A model adds its own columns through ``pred["per_sample"] = {name: (B,) tensor}`` (e.g. OpNet's
    ``sigma_rot_frobenius``); names must not collide with the standard columns.
    """
    B = len(batch["sample_id"])
    nan = torch.full((B,), float("nan"), dtype=torch.float64)
    cols: dict[str, list] = {"sample_id": list(batch["sample_id"]), "dataset": list(batch["dataset"])}

    def matrix(prefix: str, R: torch.Tensor | None, has: torch.Tensor | None) -> None:
        for i in range(3):
            for j in range(3):
                v = nan if R is None else R[:, i, j].detach().double().cpu()
                if has is not None:
                    v = torch.where(has.cpu(), v, nan)
                cols[f"{prefix}_R_{i}{j}"] = v.tolist()

    def vector(prefix: str, t: torch.Tensor | None, has: torch.Tensor | None) -> None:
        for k, ax in enumerate(AXES):
            v = nan if t is None else t[:, k].detach().double().cpu()
            if has is not None:
                v = torch.where(has.cpu(), v, nan)
            cols[f"{prefix}_t_{ax}"] = v.tolist()

    matrix("pred", pred.get("R"), None)
    matrix("gt", batch["R"], batch["has_R"])
    vector("pred", pred.get("t"), None)
    vector("gt", batch["t"], batch["has_t"])
    for name, v in errors.items():
        cols[name] = v.detach().double().cpu().tolist()
    for name, v in (pred.get("per_sample") or {}).items():
        if name in cols:
            raise ValueError(f"pred['per_sample'] column {name!r} collides with a standard predictions.parquet column")
        v = torch.as_tensor(v).detach().float().cpu().reshape(-1)
        if v.numel() != B:
            raise ValueError(f"pred['per_sample'][{name!r}] has {v.numel()} values for a batch of {B}")
        cols[name] = v.tolist()
    return cols


def git_version(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and whether the work tree had uncommitted changes (None outside a git checkout)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def run_info(seed: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from . import __version__
    info = {
        "seed": seed, "code_version": __version__, "git": git_version(),
        "command": [sys.executable] + sys.argv, "started_utc": datetime.now(timezone.utc).isoformat(),
        "python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    info.update(extra or {})
    return info
