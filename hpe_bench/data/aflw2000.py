"""AFLW2000-3D (Zhu et al., 3DDFA) in its distributed layout: ``image00002.jpg`` + ``image00002.mat``.

Labels per image (``hpe_bench.data.bfm_mat`` has the conversions): ``R`` and ``head_2d`` from ``Pose_Para``,
``shape_params`` from ``Shape_Para``/``Exp_Para``, ``landmarks_2d``/``landmarks_3d`` from ``pt3d_68``.
No intrinsics (``K`` absent; the working crop adds ``K_fallback``), no metric ``t``, no vertices.
The ``pt2d`` field (the 21 AFLW points, ``-1`` where invisible) is not read.

Protocols: ``"1969"`` (OpNet, 6DRepNet, ...): drop every image with any ``|Pose_Para angle| > 99 deg``
(31 of 2000); ``"all"``: the 2000 images. A record whose angles cannot be read (corrupt ``.mat``, NaN angle)
is indexed under either protocol and ``read`` raises its ``RecordError``, so ``on_error`` decides its fate.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import bfm_mat
from .raw import RawSource, RecordError, read_image, require_finite

log = logging.getLogger(__name__)

PROTOCOLS = ("1969", "all")
MAX_ANGLE_DEG = 99.0
NUM_IMAGES = 2000


def protocol_keep(pose_deg: np.ndarray, protocol: str = "1969") -> np.ndarray:
    """``(N,)`` bool: images kept by ``protocol`` given their ``(N, 3)`` Euler angles in degrees.

    ``"1969"`` keeps an image iff all three ``|angle| <= 99``; the sign convention of the angles does not
    matter (pinned on the 2000 real labels: 1969 kept, tests/test_data_aflw2000.py).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown AFLW2000-3D protocol {protocol!r}; choose one of {PROTOCOLS}")
    pose_deg = np.asarray(pose_deg, dtype=np.float64).reshape(-1, 3)
    if protocol == "all":
        return np.ones(len(pose_deg), dtype=bool)
    return np.all(np.abs(pose_deg) <= MAX_ANGLE_DEG, axis=1)


class AFLW2000(RawSource):
    """AFLW2000-3D test set.

    Args:
        root: folder with the 2000 ``imageNNNNN.jpg`` / ``.mat`` pairs (or its parent holding ``AFLW2000/``).
        split: label only (the dataset is a test set).
        protocol: ``"1969"`` (default) or ``"all"``.
        box: ``"landmarks"`` (tight box of the 68 ``pt3d_68`` points, OpNet's roi) or ``"head"``
            (``bfm_mat.head_box``: head sphere around the projected BFM centre united with the posed bfm68 points).
    """

    name = "aflw2000"
    euler_rule = "opnet"
    layout = ("<root>/image00002.jpg, <root>/image00002.mat, ... (2000 pairs; .mat fields Pose_Para 1x7, "
              "Shape_Para 199x1, Exp_Para 29x1, pt3d_68 3x68), as in AFLW2000-3D.zip; <root> may also be "
              "the folder that contains AFLW2000/")

    def __init__(self, root: str | Path | None, split: str = "test", protocol: str = "1969",
                 box: str = "landmarks"):
        super().__init__(root, split)
        if box not in bfm_mat.BOX_RULES:
            raise ValueError(f"unknown box rule {box!r}; choose one of {bfm_mat.BOX_RULES}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown AFLW2000-3D protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.protocol, self.box = protocol, box
        folder = self.root
        if not any(folder.glob("image*.mat")) and (folder / "AFLW2000").is_dir():
            folder = folder / "AFLW2000"
        self.folder = folder
        mats = sorted(folder.glob("image*.mat"))
        if not mats:
            self.require(folder / "image00002.mat")
        if len(mats) != NUM_IMAGES:
            log.warning("%s: %d .mat files in %s, the full dataset has %d", self.name, len(mats), folder, NUM_IMAGES)
        # The protocol filter needs every record's angles now, but a record whose angles cannot be read (a
        # corrupt .mat, a NaN angle) is a bad *record*, not a bad dataset: it stays in the index and ``read``
        # raises its RecordError, so ``on_error`` (PreparedDataset) decides: skip leaves it out (counted,
        # logged), raise stops with the file's name. Neither protocol can say whether it would keep it.
        self.unreadable: dict[str, str] = {}
        angles = np.zeros((len(mats), 3))
        for j, path in enumerate(mats):
            try:
                angles[j] = self._pose_deg(path)
            except RecordError as err:
                self.unreadable[path.stem] = str(err)
        keep = protocol_keep(angles, protocol) | np.array([p.stem in self.unreadable for p in mats], bool)
        self.stems = [p.stem for p, k in zip(mats, keep) if k]
        self.removed = [p.stem for p, k in zip(mats, keep) if not k]
        if self.unreadable:
            log.warning("%s: %d of %d .mat files have unreadable or non-finite Pose_Para angles; reading them "
                        "raises a RecordError (left out under on_error=skip), first: %s", self.name,
                        len(self.unreadable), len(mats), next(iter(self.unreadable.values())))

    def _pose_deg(self, mat_path: Path) -> np.ndarray:
        pose = bfm_mat.load_mat(mat_path, ["Pose_Para"])["Pose_Para"].reshape(-1)
        if pose.size < 7 or not np.all(np.isfinite(pose[:3])):
            raise RecordError(f"{str(mat_path)!r}: Pose_Para must hold 7 finite values, got {pose.tolist()}")
        return np.degrees(pose[:3])

    def __len__(self) -> int:
        return len(self.stems)

    def record_id(self, index: int) -> str:
        return f"{self.name}/{self.stems[index]}"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "protocol": self.protocol, "box": self.box}

    def read(self, index: int) -> dict[str, Any]:
        stem = self.stems[index]
        mat_path = self.folder / f"{stem}.mat"
        where = f"{self.name} record {stem!r} ({str(mat_path)!r})"
        if stem in self.unreadable:
            raise RecordError(self.unreadable[stem])
        image = read_image(self.folder / f"{stem}.jpg")
        height, width = image.shape[:2]
        mat = bfm_mat.load_mat(mat_path, ["Pose_Para", "Shape_Para", "Exp_Para", "pt3d_68"])
        sample: dict[str, Any] = {"image": image, "dataset": self.name, "sample_id": self.record_id(index),
                                  "topology": ""}
        sample.update(bfm_mat.mat_labels(mat, width, height, where))
        pt3d = mat["pt3d_68"]
        if pt3d.shape != (3, 68):
            raise RecordError(f"{where}: pt3d_68 has shape {pt3d.shape}, expected (3, 68)")
        require_finite({"pt3d_68": pt3d}, where)
        xy = pt3d[:2].T
        # A point at the (-1, -1) sentinel has no position: the sample then carries no landmark label
        # (the schema has no per-point mask) and its landmark box uses the valid points only.
        if bfm_mat.valid_landmarks(xy).all():
            sample["landmarks_3d"] = bfm_mat.landmarks_from_pt3d(pt3d)
            sample["landmarks_2d"] = xy.copy()
        sample["box"] = bfm_mat.choose_box(self.box, where, xy, sample["R"], sample["head_2d"],
                                           sample["shape_params"])
        return sample
