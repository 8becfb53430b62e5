"""Face Synthetics (Wood et al. 2021, Microsoft) in the layout it is distributed in.

Per id: ``{id:06d}.png`` (512x512 render), ``{id:06d}_ldmks.txt`` (70 rows ``x y``: the 68 iBUG landmarks then
the 2 pupils) and ``{id:06d}_seg.png`` (class ids; skin 1, nose 2). Labels: ``landmarks_2d`` (the first 68)
only -- no pose, no intrinsics (``K_fallback`` = ``geometry.fallback_intrinsics`` of the image, as for every
dataset without ``K``). Box (OpNet): the extent of the skin and nose pixels; records whose box has a side
<= ``min_side`` (32 px) are dropped, counted in ``num_dropped`` and logged. Finding boxes reads every
segmentation once (minutes for 100k ids); ``index_dir`` caches the result.

Splits by id: ``train`` = ids < ``val_start``, ``val`` = ids >= ``val_start`` (default 99000: the last 1000 of
the 100k release), ``all``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .. import geometry as G
from .raw import LayoutError, RawSource, RecordError, read_image, require_finite

log = logging.getLogger(__name__)

FACE_CLASSES = (1, 2)  # skin, nose
NUM_POINTS = 70
SPLITS = ("train", "val", "all")
_IMAGE = re.compile(r"^(\d{6})\.png$")
INDEX_VERSION = 1


def seg_box(path: Path) -> np.ndarray:
    """Box ``(4,)`` of the skin + nose pixels of a segmentation PNG (pixel-centre convention: the pixels' outer
    edges, so the side is the pixel count); NaN box if there are none; ``RecordError`` if unreadable."""
    seg = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if seg is None:
        raise RecordError(f"segmentation file {str(path)!r} is missing or cannot be decoded")
    if seg.ndim == 3:
        seg = seg[..., 0]
    ys, xs = np.nonzero(np.isin(seg, FACE_CLASSES))
    if xs.size == 0:
        return np.full(4, np.nan)
    return np.array([xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5])


class FaceSynthetics(RawSource):
    """One id-range split of Face Synthetics; see the module docstring."""

    name = "facesynthetics"
    euler_rule = "opnet"  # no pose labels; OpNet uses the set for landmark supervision
    layout = ("<root>/{id:06d}.png, <root>/{id:06d}_ldmks.txt (70 rows 'x y': 68 iBUG + 2 pupils), "
              "<root>/{id:06d}_seg.png (class ids: skin 1, nose 2), ids 000000..099999")

    def __init__(self, root: str | Path | None, split: str = "train", val_start: int = 99000, min_side: float = 32,
                 index_dir: str | Path | None = None):
        if split not in SPLITS:
            raise ValueError(f"facesynthetics: split must be one of {SPLITS}, got {split!r}")
        super().__init__(root, split)
        self.val_start, self.min_side = int(val_start), float(min_side)
        all_ids = sorted(int(m.group(1)) for m in map(_IMAGE.match, os.listdir(self.root)) if m)
        if not all_ids:
            raise LayoutError(f"{self.name}: no {{id:06d}}.png images in {str(self.root)!r}; expected layout:\n"
                              f"{self.layout}")
        ids = np.asarray(all_ids, np.int64)
        boxes, readable = self._boxes(ids, Path(index_dir) if index_dir else None)
        in_split = {"train": ids < self.val_start, "val": ids >= self.val_start, "all": np.ones(len(ids), bool)}
        in_split = in_split[split]
        with np.errstate(invalid="ignore"):
            sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            # no skin/nose pixels (NaN side) or a small box; an unreadable segmentation stays, so read() names it
            drop = in_split & readable & ~(sides > self.min_side)
        self.dropped_ids = [f"{i:06d}" for i in ids[drop]]
        self.num_dropped = len(self.dropped_ids)
        self.ids, self.boxes = ids[in_split & ~drop], boxes[in_split & ~drop]
        log.info("facesynthetics %s: %d records, %d dropped (no skin/nose pixels or a box side <= %g px)",
                 split, len(self.ids), self.num_dropped, self.min_side)

    def _boxes(self, ids: np.ndarray, index_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
        """Skin + nose boxes ``(n, 4)`` of every id (NaN if none) and whether each segmentation could be read;
        cached in ``index_dir`` (atomically written) if given."""
        key = hashlib.sha256(f"{INDEX_VERSION}|{self.root.resolve()}|{ids.tobytes().hex()}".encode()).hexdigest()[:12]
        path = index_dir / f"{self.name}-index-{key}.npz" if index_dir else None
        if path is not None and path.is_file():
            with np.load(path) as data:
                if np.array_equal(data["ids"], ids):
                    return data["boxes"], data["readable"]
        boxes, readable = np.full((len(ids), 4), np.nan), np.ones(len(ids), bool)
        for j, i in enumerate(tqdm(ids, desc=f"{self.name}: face boxes from segmentations", disable=len(ids) < 1000)):
            try:
                boxes[j] = seg_box(self.root / f"{i:06d}_seg.png")
            except RecordError:
                readable[j] = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
            np.savez(tmp, ids=ids, boxes=boxes, readable=readable)
            os.replace(tmp, path)
        return boxes, readable

    def __len__(self) -> int:
        return len(self.ids)

    def record_id(self, index: int) -> str:
        return f"{self.ids[index]:06d}"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "val_start": self.val_start, "min_side": self.min_side}

    def read(self, index: int) -> dict[str, Any]:
        rid = self.record_id(index)
        image = read_image(self.root / f"{rid}.png")
        path = self.root / f"{rid}_ldmks.txt"
        try:
            points = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except (OSError, ValueError) as err:
            raise RecordError(f"landmark file {str(path)!r} cannot be read: {err}") from None
        if points.shape != (NUM_POINTS, 2):
            raise RecordError(f"landmark file {str(path)!r} holds {points.shape}, expected ({NUM_POINTS}, 2)")
        require_finite({"landmarks_2d": points}, f"landmark file {str(path)!r}")
        box = self.boxes[index]
        if np.isnan(box).any():
            box = seg_box(self.root / f"{rid}_seg.png")  # raises naming the file
        h, w = image.shape[:2]
        return {"image": image, "box": box.astype(np.float32), "dataset": self.name,
                "sample_id": f"{self.name}/{rid}", "topology": "",
                "landmarks_2d": points[:68].astype(np.float32),
                "K_fallback": G.fallback_intrinsics(w, h).numpy()}
