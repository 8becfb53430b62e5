"""Shared test settings: W&B offline, no hub downloads, paths to ../shared/assets."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HPE_BENCH_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    path = SHARED / "assets"
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path} (set HPE_BENCH_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference``: facts and reference values from the papers' authors' code (losses/, checkpoints/)."""
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip(f"shared reference not found at {path} (set HPE_BENCH_SHARED)")
    return path
