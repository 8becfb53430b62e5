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


def read_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    run_dir = Path(run_dir)
    path = run_dir / "predictions.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a run writes it after its test)")
    metrics = run_dir / "metrics.json"
    return pd.read_parquet(path), (json.loads(metrics.read_text()) if metrics.is_file() else {})


def _label(run_dir: Path, record: dict[str, Any]) -> str:
    return f"{record.get('experiment', '?')} seed {record.get('seed', '?')} ({run_dir.name})"


