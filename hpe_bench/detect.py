"""Face boxes for ``hpe-bench predict``: an offline detector (MTCNN) or boxes read from a file.

Why MTCNN (facenet-pytorch's implementation): it is the detector the BIWI protocol boxes came from, it runs
on CPU in plain PyTorch, and its three small networks (2 MB) ship **inside** the ``facenet-pytorch`` wheel
(``facenet_pytorch/data/{p,r,o}net.pt``), so nothing is downloaded at run time. facenet-pytorch 2.6 pins
``torch<2.3`` and ``numpy<2`` in its metadata although its MTCNN runs on current versions, so ``make setup``
installs it with ``--no-deps`` (docs/predict.md has the survey of the alternatives).

Every detector returns ``(boxes (N, 4) float64 (x0, y0, x1, y1) pixels, scores (N,))`` for an RGB uint8 image,
sorted by score, highest first.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Protocol

import numpy as np

from .cli import InputError  # noqa: F401  (re-exported for the tools' imports)


class Detector(Protocol):
    name: str

    def __call__(self, image: np.ndarray, source: str, frame: int) -> tuple[np.ndarray, np.ndarray]: ...


class MTCNNDetector:
    """facenet-pytorch's MTCNN (weights inside its wheel), faces with a score >= ``min_score``."""

    name = "mtcnn"

    def __init__(self, min_score: float = 0.9, min_face_size: int = 20, device: str = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise InputError("the face detector needs facenet-pytorch: run `make setup`, or "
                             "`pip install --no-deps facenet-pytorch==2.6.0`; or give --boxes FILE") from err
        self.min_score = float(min_score)
        self.model = MTCNN(keep_all=True, min_face_size=min_face_size, post_process=False, device=device)

    def __call__(self, image: np.ndarray, source: str = "", frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
        boxes, probs = self.model.detect(np.ascontiguousarray(image))
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0)
        # facenet-pytorch builds object arrays under numpy 2: go through lists
        boxes = np.asarray(np.asarray(boxes).tolist(), dtype=np.float64).reshape(-1, 4)
        probs = np.asarray([np.nan if p is None else float(p) for p in np.asarray(probs).reshape(-1)])
        keep = probs >= self.min_score
        order = np.argsort(-probs[keep], kind="stable")
        return boxes[keep][order], probs[keep][order]


class BoxFileDetector:
    """Boxes from a CSV file with a header ``source,frame,x0,y0,x1,y1`` (``frame`` optional: 0 for images).

    ``source`` is matched to an input's path as given on the command line or to its file name. An input
    frame without a row has no face.
    """

    name = "boxes_file"
    COLUMNS = ("source", "x0", "y0", "x1", "y1")

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"boxes file not found: {path}")
        self.boxes: dict[tuple[str, int], list[list[float]]] = {}
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in self.COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"boxes file {path}: missing columns {missing}; expected header "
                                 "source,frame,x0,y0,x1,y1 (frame optional)")
            for line, row in enumerate(reader, start=2):
                try:
                    box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
                    frame = int(row.get("frame") or 0)
                except ValueError as err:
                    raise InputError(f"boxes file {path} line {line}: {err}") from err
                if not (box[2] > box[0] and box[3] > box[1]):
                    raise InputError(f"boxes file {path} line {line}: empty box {box} (need x1 > x0, y1 > y0)")
                self.boxes.setdefault((row["source"], frame), []).append(box)

    def __call__(self, image: np.ndarray, source: str = "", frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
        found = self.boxes.get((source, frame)) or self.boxes.get((Path(source).name, frame)) or []
        return np.asarray(found, dtype=np.float64).reshape(-1, 4), np.full(len(found), np.nan)

    def sources(self) -> set[str]:
        return {s for s, _ in self.boxes}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` of boxes ``a (N, 4)`` and ``b (M, 4)``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)
