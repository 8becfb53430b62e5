"""BIWI Kinect Head Pose (Fanelli et al.) in the official layout and the common Kaggle mirror.

Per frame: ``NN/frame_XXXXX_rgb.png`` and ``frame_XXXXX_pose.txt`` (3 rows of R, a blank line, the head centre
in mm: ``v_depth = R v + T`` in the depth camera, OpenCV axes); per sequence ``NN/rgb.cal`` (RGB ``K``, a blank,
4 distortion terms, a blank, ``R_ext`` 3 rows, a blank, ``T_ext`` mm, a blank, ``W H``; ``v_rgb = R_ext v_depth +
T_ext``) and the subject template ``NN.obj`` (mm, y up, nose toward +z).

Labels (package frames): ``R = R_ext R_head``, ``t = (R_ext T_head + T_ext) / 1000`` (``geometry.compose_pose``),
``K`` from ``rgb.cal`` (distortion ignored, as by TRG and PerspNet), ``vertices`` = the template in the head frame
(``geometry.biwi_template_to_head``: ``F v / 1000``), topology ``biwi_NN`` (per-subject mesh).

Protocols: ``rotation`` (OpNet): the 13,219 frames and MTCNN boxes of the opal23 annotation, Euler rule ``opnet``;
``6dof`` (TRG, PerspNet): every frame with a pose file, box = tight box of the projected template, rule ``trg``;
``70_30`` (FSA-Net's protocol 2, by sequences): the frames of ``6dof`` in the 16 train or 8 test sequences of
``SEQUENCES_70_30`` (``split``), rule ``opnet``. FSA-Net never published its split, so hpe_bench fixes one: test =
every third sequence (03, 06, ..., 24); hpe_bench/protocols/biwi_70_30.yaml states the same lists.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import geometry as G
from .raw import LayoutError, RawSource, RecordError, read_image, require_finite

PROTOCOLS = ("rotation", "6dof", "70_30")
# BIWI 70/30 by sequences: 8 test sequences (every third), the other 16 train
SEQUENCES_70_30 = {"test": tuple(f"{i:02d}" for i in range(3, 25, 3)),
                   "train": tuple(f"{i:02d}" for i in range(1, 25) if i % 3)}
ROTATION_LABELS = ("pose", "annotation")
# where the sequence folders NN/ live below the root: official tgz, Kaggle mirror, or the folder itself
SEQUENCE_PARENTS = ("", "hpdb", "faces_0", "kinect_head_pose_db", "kinect_head_pose_db/hpdb")
IMAGE_SUFFIXES = ("_rgb.png", "_rgb.jpg")  # .jpg: the fast.ai re-encoding of the same frames
ANNOTATION_COLUMNS = ("image", "x0", "y0", "x1", "y1", "yaw", "pitch", "roll")


def default_annotation() -> Path:
    """The packaged copy of the opal23 BIWI protocol file (sha256 in hpe_bench/assets/README.md)."""
    return Path(str(resources.files("hpe_bench.assets").joinpath("opal23_biwi_ann.txt")))


def read_opal23_biwi(path: str | Path) -> pd.DataFrame:
    """Rows of an opal23 BIWI file ``#;image;tl_x;tl_y;br_x;br_y;yaw;pitch;roll;`` (degrees; the yaw sign is
    unverified, see docs/datasets.md) as a frame with ``ANNOTATION_COLUMNS``."""
    frame = pd.read_csv(path, sep=";", skiprows=1, header=None, usecols=range(8),
                        names=list(ANNOTATION_COLUMNS), dtype={"image": str})
    bad = frame[list(ANNOTATION_COLUMNS[1:])].isna().any(axis=1)
    if bad.any():
        raise LayoutError(f"BIWI annotation {str(path)!r}: row {int(np.argmax(bad.values)) + 2} is incomplete")
    return frame


def _floats(path: Path, what: str) -> list[list[float]]:
    """Non-empty lines of a whitespace-separated text file as float rows; ``RecordError`` naming ``path``."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RecordError(f"BIWI {what} {str(path)!r} cannot be read: {err}") from None
    try:
        return [[float(v) for v in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError as err:
        raise RecordError(f"BIWI {what} {str(path)!r} is malformed: {err}") from None


def read_calibration(path: Path) -> dict[str, np.ndarray]:
    """``rgb.cal`` -> ``K (3, 3)``, ``dist``, ``R (3, 3)``, ``T (3,)`` (mm); ``RecordError`` naming the file."""
    rows = _floats(path, "calibration")
    shapes = [len(r) for r in rows[:8]]
    if len(rows) < 8 or shapes[:3] != [3, 3, 3] or shapes[4:8] != [3, 3, 3, 3]:
        raise RecordError(f"BIWI calibration {str(path)!r}: expected 3 rows of K, the distortion row, 3 rows of "
                          f"R and one of T (then W H), got row lengths {[len(r) for r in rows]}")
    cal = {"K": np.array(rows[:3]), "dist": np.array(rows[3]), "R": np.array(rows[4:7]), "T": np.array(rows[7])}
    require_finite(cal, f"BIWI calibration {str(path)!r}")
    return cal


def read_pose(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``frame_XXXXX_pose.txt`` -> ``(R (3, 3), T (3,) mm)``; ``RecordError`` naming ``where`` if invalid."""
    rows = _floats(path, "pose file")
    if len(rows) != 4 or any(len(r) != 3 for r in rows):
        raise RecordError(f"{where}: pose file {str(path)!r} must hold 3 rows of R and one of T, got {rows}")
    R, T = np.array(rows[:3]), np.array(rows[3])
    require_finite({"R": R, "T": T}, f"{where} ({str(path)!r})")
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
        raise RecordError(f"{where}: pose file {str(path)!r} holds no rotation matrix: {R.tolist()}")
    return R, T


def read_obj_vertices(path: Path) -> np.ndarray:
    """Vertices ``(N, 3)`` of the ``v x y z`` lines of a Wavefront ``.obj``."""
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    if not rows:
        raise RecordError(f"BIWI template {str(path)!r} has no 'v x y z' vertex lines")
    return np.asarray(rows, dtype=np.float64)


def find_sequence_dir(root: Path) -> Path | None:
    """The folder holding the sequence folders ``01 .. 24`` below ``root`` (see ``SEQUENCE_PARENTS``)."""
    for sub in SEQUENCE_PARENTS:
        base = root / sub
        if base.is_dir() and any((base / d).is_dir() and d.isdigit() and len(d) == 2
                                 and any(n.startswith("frame_") or n == "rgb.cal" for n in os.listdir(base / d))
                                 for d in os.listdir(base)):
            return base
    return None


class BIWI(RawSource):
    """BIWI under one protocol. ``annotation`` (rotation protocol) defaults to the packaged opal23 file;
    ``rotation_labels``: ``pose`` (pose files moved into the RGB camera; default) or ``annotation`` (the opal23
    angles through ``geometry.opal23_to_matrix``; then no ``t``/``vertices``)."""

    name = "biwi"
    layout = ("official kinect_head_pose_db.tgz:  <root>/hpdb/NN/frame_XXXXX_rgb.png, NN/frame_XXXXX_pose.txt, "
              "NN/rgb.cal (NN = 01..24), and the templates <root>/hpdb/NN.obj\n"
              "Kaggle mirror (kmader/biwi-kinect-head-pose-database):  <root>/faces_0/NN/... and <root>/faces_0/NN.obj\n"
              "root may also be the hpdb/ or faces_0/ folder itself")

    def __init__(self, root: str | Path | None, split: str = "test", protocol: str = "rotation",
                 annotation: str | Path | None = None, rotation_labels: str = "pose"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"biwi: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if rotation_labels not in ROTATION_LABELS:
            raise ValueError(f"biwi: rotation_labels must be one of {ROTATION_LABELS}, got {rotation_labels!r}")
        if protocol == "70_30" and split not in SEQUENCES_70_30:
            raise ValueError(f"biwi: the 70_30 protocol has splits {tuple(SEQUENCES_70_30)}, got split={split!r}")
        super().__init__(root, split)
        self.protocol, self.rotation_labels = protocol, rotation_labels
        self.euler_rule = "trg" if protocol == "6dof" else "opnet"
        data_dir = find_sequence_dir(self.root)
        if data_dir is None:
            raise LayoutError(f"{self.name}: no sequence folders NN/ with frame_*/rgb.cal files under "
                              f"{str(self.root)!r}; expected layout:\n{self.layout}")
        self.data_dir = data_dir
        self._files = {d: set(os.listdir(data_dir / d)) for d in sorted(os.listdir(data_dir))
                       if (data_dir / d).is_dir() and d.isdigit() and len(d) == 2}
        self._cal: dict[str, dict[str, np.ndarray]] = {}
        self._templates: dict[str, np.ndarray] = {}
        if protocol == "rotation":
            self.annotation = Path(annotation) if annotation else default_annotation()
            self.require(self.annotation)
            ann = read_opal23_biwi(self.annotation)
            parts = ann["image"].str.split("/")
            self.records = [(p[-2], p[-1].rsplit("_", 1)[0]) for p in parts]
            self.boxes = ann[["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
            self.angles = ann[["yaw", "pitch", "roll"]].to_numpy(np.float64)
        else:
            self.annotation = None
            keep = SEQUENCES_70_30[split] if protocol == "70_30" else None
            self.records = [(seq, n[: -len("_pose.txt")]) for seq, names in self._files.items()
                            if keep is None or seq in keep
                            for n in sorted(names) if n.startswith("frame_") and n.endswith("_pose.txt")]
            if protocol == "70_30" and not self.records:
                raise LayoutError(f"{self.name}: no frame with a pose file in the {split} sequences {keep} of the "
                                  f"70_30 protocol under {str(data_dir)!r}; expected layout:\n{self.layout}")
        self._check_files()

    def _check_files(self) -> None:
        """Every record's image (and what its labels need) exists: a partial download fails here, named."""
        missing = [f"{seq}/{frame}{IMAGE_SUFFIXES[0]}" for seq, frame in self.records
                   if self._image_name(seq, frame) is None]
        needs_pose = self.protocol != "rotation" or self.rotation_labels == "pose"
        seqs = sorted({seq for seq, _ in self.records})
        for seq in seqs:
            if "rgb.cal" not in self._files.get(seq, ()):
                missing.append(f"{seq}/rgb.cal")
            if self.protocol != "rotation" and not (self.data_dir / f"{seq}.obj").is_file():
                missing.append(f"{seq}.obj")
        if needs_pose:
            missing += [f"{seq}/{frame}_pose.txt" for seq, frame in self.records
                        if f"{frame}_pose.txt" not in self._files.get(seq, ())]
        if missing:
            raise LayoutError(f"{self.name}: {len(missing)} files needed by the {len(self.records)} records of the "
                              f"{self.protocol} protocol are missing under {str(self.data_dir)!r}, first "
                              f"{missing[0]!r}; expected layout:\n{self.layout}")

    def _image_name(self, seq: str, frame: str) -> str | None:
        names = self._files.get(seq, ())
        return next((frame + s for s in IMAGE_SUFFIXES if frame + s in names), None)

    def __len__(self) -> int:
        return len(self.records)

    def record_id(self, index: int) -> str:
        return "/".join(self.records[index])

    def settings(self) -> dict[str, Any]:
        ann = self.annotation.name if self.annotation else None
        return {**super().settings(), "protocol": self.protocol, "rotation_labels": self.rotation_labels,
                "annotation": ann}

    def calibration(self, seq: str) -> dict[str, np.ndarray]:
        if seq not in self._cal:
            self._cal[seq] = read_calibration(self.data_dir / seq / "rgb.cal")
        return self._cal[seq]

    def template(self, seq: str) -> np.ndarray | None:
        """Head-frame template vertices ``(N, 3)`` metres of sequence ``seq``, or None without ``NN.obj``."""
        path = self.data_dir / f"{seq}.obj"
        if seq not in self._templates and path.is_file():
            verts = read_obj_vertices(path)
            require_finite({"vertices": verts}, f"BIWI template {str(path)!r}")
            self._templates[seq] = G.biwi_template_to_head(torch.as_tensor(verts)).numpy()
        return self._templates.get(seq)

    def read(self, index: int) -> dict[str, Any]:
        seq, frame = self.records[index]
        rid = self.record_id(index)
        image = read_image(self.data_dir / seq / (self._image_name(seq, frame) or frame + IMAGE_SUFFIXES[0]))
        cal = self.calibration(seq)
        sample: dict[str, Any] = {"image": image, "dataset": self.name, "sample_id": f"{self.name}/{rid}",
                                  "topology": "", "K": cal["K"]}
        if self.protocol == "rotation" and self.rotation_labels == "annotation":
            sample["R"] = G.opal23_to_matrix(torch.as_tensor(self.angles[index])).numpy()
        else:
            R_head, T_head = read_pose(self.data_dir / seq / f"{frame}_pose.txt", f"BIWI record {rid!r}")
            R, t_mm = G.compose_pose(*(torch.as_tensor(a) for a in (cal["R"], cal["T"], R_head, T_head)))
            sample["R"], sample["t"] = G.project_to_so3(R).numpy(), t_mm.numpy() / 1000.0
            vertices = self.template(seq)
            if vertices is not None:
                sample["vertices"], sample["topology"] = vertices, f"biwi_{seq}"
        if self.protocol == "rotation":
            sample["box"] = self.boxes[index]
        else:
            cam = G.transform_points(torch.as_tensor(sample["vertices"]), torch.as_tensor(sample["R"]),
                                     torch.as_tensor(sample["t"]))
            sample["box"] = G.box_from_points(G.project_points(cam, torch.as_tensor(cal["K"]))).numpy()
        for key in ("box", "K", "R", "t", "vertices"):
            if key in sample:
                sample[key] = np.asarray(sample[key], np.float32)
        return sample
