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


def _shared_dir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared {name} not found at {path} (set HPE_BENCH_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """``../shared/assets``: real data (aflw2kmini.h5, face models, protocol label files)."""
    return _shared_dir("assets")


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference``: facts and reference values from the papers' authors' code (losses/, checkpoints/)."""
    return _shared_dir("reference")
