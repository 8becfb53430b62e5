"""300W-LP (Zhu et al., 3DDFA) in its distributed layout.

``<root>/{AFW,HELEN,IBUG,LFPW}/<name>.jpg + <name>.mat`` (``Pose_Para``, ``Shape_Para``, ``Exp_Para``, ...),
the mirrored copies in ``<root>/{AFW,HELEN,IBUG,LFPW}_Flip/`` (same names, own ``.mat``), and
``<root>/landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat`` (``pts_2d``, ``pts_3d``: 68x2 each, for the
un-flipped images only).

Labels: ``R``, ``head_2d``, ``shape_params`` from the ``.mat`` (``hpe_bench.data.bfm_mat``);
``landmarks_2d`` = ``pts_3d`` of the landmarks folder (the projected 3D landmarks, the convention of
AFLW2000-3D's ``pt3d_68``; ``pts_2d`` on request), mirrored (``x -> W - 1 - x``, left/right indices swapped)
for ``_Flip`` images; ``landmarks_3d`` = OpNet's bfm68 model posed with the sample's labels (the dataset has
no z; OpNet reconstructs its 3D landmarks the same way), z centred on the eye corners. No intrinsics.

Splits: ``"all"``; ``"train"``/``"val"``: a deterministic hold-out of ``val_fraction`` of the source photos
(every profiled variant ``_0.._N`` and its flip stay on one side, so val is not a near-copy of train).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import geometry as G
from . import bfm_mat
from .raw import RawSource, RecordError, read_image, require_finite

SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
SPLITS = ("train", "val", "all")
LANDMARK_FIELDS = ("pts_3d", "pts_2d")


def photo_group(subset: str, stem: str) -> str:
    """Source photo of an image: subset without ``_Flip`` and the name without its profiling index ``_<k>``."""
    photo = re.sub(r"_\d+$", "", stem)
    return f"{subset.removesuffix('_Flip')}/{photo}"


def in_val(group: str, val_fraction: float) -> bool:
    """Deterministic membership of a photo group in the held-out fraction (SHA-1 of its name)."""
    h = int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big") / 2.0 ** 64
    return h < val_fraction


class W300LP(RawSource):
    """300W-LP training set.

    Args:
        root: the ``300W_LP`` folder.
        split: ``"train"``, ``"val"`` or ``"all"`` (see module doc).
        subsets: which of AFW, HELEN, IBUG, LFPW to read.
        flipped: also read the ``*_Flip`` folders.
        val_fraction: share of source photos held out for ``"val"``.
        landmarks_2d: ``"pts_3d"`` (default), ``"pts_2d"`` or ``None`` (do not read the landmarks folder).
        box: ``"landmarks"`` (tight box of ``landmarks_2d``; the posed bfm68 points when not read) or ``"head"``.
    """

    name = "300wlp"
    euler_rule = "opnet"
    layout = ("<root>/{AFW,HELEN,IBUG,LFPW}/<name>.jpg + <name>.mat (Pose_Para 1x7, Shape_Para 199x1, "
              "Exp_Para 29x1), <root>/{AFW,HELEN,IBUG,LFPW}_Flip/ (same), "
              "<root>/landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat (pts_2d, pts_3d: 68x2), as in 300W-LP.zip")

    def __init__(self, root: str | Path | None, split: str = "train", subsets: Sequence[str] = SUBSETS,
                 flipped: bool = True, val_fraction: float = 0.02, landmarks_2d: str | None = "pts_3d",
                 box: str = "landmarks"):
        super().__init__(root, split)
        if split not in SPLITS:
            raise ValueError(f"unknown 300W-LP split {split!r}; choose one of {SPLITS}")
        bad = [s for s in subsets if s not in SUBSETS]
        if bad:
            raise ValueError(f"unknown 300W-LP subset(s) {bad}; choose from {SUBSETS}")
        if landmarks_2d not in LANDMARK_FIELDS + (None,):
            raise ValueError(f"unknown landmarks_2d {landmarks_2d!r}; choose one of {LANDMARK_FIELDS} or null")
        if box not in bfm_mat.BOX_RULES:
            raise ValueError(f"unknown box rule {box!r}; choose one of {bfm_mat.BOX_RULES}")
        self.subsets, self.flipped, self.val_fraction = tuple(subsets), bool(flipped), float(val_fraction)
        self.landmarks_2d, self.box = landmarks_2d, box
        folders = [s for s in self.subsets] + ([f"{s}_Flip" for s in self.subsets] if flipped else [])
        self.require(*(self.root / f for f in folders))
        if landmarks_2d is not None:
            self.require(*(self.root / "landmarks" / s for s in self.subsets))
        self.records: list[tuple[str, str]] = []
        for folder in folders:
            for jpg in sorted((self.root / folder).glob("*.jpg")):
                if split != "all" and in_val(photo_group(folder, jpg.stem), self.val_fraction) != (split == "val"):
                    continue
                self.records.append((folder, jpg.stem))

    def __len__(self) -> int:
        return len(self.records)

    def record_id(self, index: int) -> str:
        folder, stem = self.records[index]
        return f"{self.name}/{folder}/{stem}"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "subsets": list(self.subsets), "flipped": self.flipped,
                "val_fraction": self.val_fraction, "landmarks_2d": self.landmarks_2d, "box": self.box}

    def _landmarks(self, folder: str, stem: str, width: int, where: str) -> np.ndarray:
        subset = folder.removesuffix("_Flip")
        path = self.root / "landmarks" / subset / f"{stem}_pts.mat"
        if not path.exists():
            raise RecordError(f"{where}: landmark file {str(path)!r} not found")
        pts = bfm_mat.load_mat(path, [self.landmarks_2d])[self.landmarks_2d]
        if pts.shape != (68, 2):
            raise RecordError(f"{str(path)!r}: {self.landmarks_2d!r} has shape {pts.shape}, expected (68, 2)")
        require_finite({self.landmarks_2d: pts}, str(path))
        if folder.endswith("_Flip"):
            # the landmark file describes the un-flipped image: mirror it (pixel centres, docs/conventions.md)
            pts = pts[list(G.IBUG68_MIRROR)] * np.array([-1.0, 1.0]) + np.array([width - 1.0, 0.0])
        return pts

    def read(self, index: int) -> dict[str, Any]:
        folder, stem = self.records[index]
        mat_path = self.root / folder / f"{stem}.mat"
        where = f"{self.name} record {folder}/{stem} ({str(mat_path)!r})"
        image = read_image(self.root / folder / f"{stem}.jpg")
        height, width = image.shape[:2]
        mat = bfm_mat.load_mat(mat_path, ["Pose_Para", "Shape_Para", "Exp_Para"])
        sample: dict[str, Any] = {"image": image, "dataset": self.name, "sample_id": self.record_id(index),
                                  "topology": ""}
        sample.update(bfm_mat.mat_labels(mat, width, height, where))
        model = bfm_mat.posed_bfm68(sample["R"], sample["head_2d"], sample["shape_params"])
        sample["landmarks_3d"] = bfm_mat.depth_centred(model)
        xy = model[:, :2]
        if self.landmarks_2d is not None:
            xy = self._landmarks(folder, stem, width, where)
            if bfm_mat.valid_landmarks(xy).all():
                sample["landmarks_2d"] = xy
        sample["box"] = bfm_mat.choose_box(self.box, where, xy, sample["R"], sample["head_2d"],
                                           sample["shape_params"])
        return sample
