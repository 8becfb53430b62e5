"""Base class of a dataset read in the layout its owners distribute, and the errors loaders raise.

A ``RawSource`` knows one dataset's on-disk layout and turns record ``i`` into a full-resolution schema
sample (``hpe_bench.schema``): the original image, its box, and every label the dataset has (absent keys
for labels it lacks). It does no cropping, resizing or caching: ``hpe_bench.data.prepared`` does that for
every source alike, so adding a dataset means one ``RawSource`` subclass + one YAML.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Mapping

import cv2
import numpy as np


class LayoutError(FileNotFoundError):
    """The dataset root is missing or not in the expected layout; the message names the path and the layout."""


class RecordError(ValueError):
    """One record is unreadable or invalid (corrupt image, NaN label, ...); the message names its file."""


class RawSource(abc.ABC):
    """One dataset split in its distributed layout.

    Subclasses set ``name`` (the ``dataset`` string of their samples), ``layout`` (the expected directory
    layout, quoted in errors and docs), ``euler_rule`` (the per-axis rule of the dataset's protocol) and
    implement ``__len__``, ``record_id`` and ``read``. ``__init__`` must check the root with ``require``
    so that a wrong path fails at construction with the expected layout in the message.
    """

    name: ClassVar[str] = "raw"
    layout: ClassVar[str] = ""
    euler_rule: ClassVar[str] = "trg"

    def __init__(self, root: str | Path | None, split: str = "test"):
        if root is None or str(root) in ("", "???", "None"):
            # `python -m hpe_bench` checks roots before a run (hpe_bench.preflight) and names the variable to set
            raise LayoutError(f"{self.name}: no dataset root given (pass root=<dir>); expected layout:\n{self.layout}")
        self.root = Path(root).expanduser()
        self.split = split
        self.require(self.root)

    def require(self, *paths: str | Path) -> None:
        """Raise ``LayoutError`` naming the first missing path and the expected layout."""
        for path in paths:
            path = Path(path)
            if not path.exists():
                raise LayoutError(f"{self.name}: {str(path)!r} not found (root {str(self.root)!r}); "
                                  f"expected layout:\n{self.layout}")

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def record_id(self, index: int) -> str:
        """Stable, unique id of record ``index`` (e.g. its relative image path without suffix)."""

    @abc.abstractmethod
    def read(self, index: int) -> dict[str, Any]:
        """Full-resolution schema sample of record ``index``; raise ``RecordError`` naming the file if bad."""

    def settings(self) -> dict[str, Any]:
        """JSON-serialisable choices that change the samples (split, protocol, box rule): part of a cache key."""
        return {"name": self.name, "split": self.split}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB; ``RecordError`` naming the file if it cannot be decoded."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.exists() else None
    if data is None:
        raise RecordError(f"image file {str(path)!r} does not exist")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise RecordError(f"image file {str(path)!r} cannot be decoded (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def require_finite(values: Mapping[str, Any], where: str) -> None:
    """``RecordError`` naming ``where`` and the field if any label holds NaN or inf."""
    for key, val in values.items():
        arr = np.asarray(val, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise RecordError(f"{where}: label {key!r} contains NaN or inf")
