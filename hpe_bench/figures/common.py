"""Shared parts of the figures: saving PNG + PDF, reading a run's predictions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

SIGMAS = (0, 2, 8, 16, 32, 48, 64)  # OpNet Fig. 2 (../shared/reference/opnet.md)
PRED_COLOUR, GT_COLOUR = (40, 80, 255), (25, 200, 25)  # OpNet Fig. 1: predictions blue, ground truth green


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``<out>/<name>.png`` and ``.pdf``; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {paths[0]} (+ .pdf)")
    return paths


def _rotations(df: pd.DataFrame, prefix: str) -> torch.Tensor:
    cols = [f"{prefix}_R_{i}{j}" for i in range(3) for j in range(3)]
    return torch.as_tensor(np.array(df[cols].to_numpy(np.float64))).reshape(-1, 3, 3)


def read_run(run: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sample predictions and metrics record of a test: ``run`` is a run directory (its
    ``predictions.parquet`` + ``metrics.json``, or its only ``predictions/<protocol>.parquet``) or a
    ``predictions/<protocol>.parquet`` file (with ``metrics/<protocol>.json``), see docs/outputs.md."""
    run = Path(run)
    if run.is_file():
        path = run
        in_dir = run.parent.name == "predictions"
        metrics = run.parent.parent / "metrics" / f"{run.stem}.json" if in_dir else run.parent / "metrics.json"
    else:
        path, metrics = run / "predictions.parquet", run / "metrics.json"
        per_protocol = sorted((run / "predictions").glob("*.parquet"))
        if not path.is_file() and len(per_protocol) == 1:
            path, metrics = per_protocol[0], run / "metrics" / f"{per_protocol[0].stem}.json"
        elif not path.is_file() and per_protocol:
            raise ValueError(f"{run} was tested on several protocols: name one of "
                             + ", ".join(str(p) for p in per_protocol))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a run writes it after its test)")
    return pd.read_parquet(path), (json.loads(metrics.read_text()) if metrics.is_file() else {})


def _label(run_dir: Path, record: dict[str, Any]) -> str:
    return f"{record.get('experiment', '?')} seed {record.get('seed', '?')} ({run_dir.name})"


