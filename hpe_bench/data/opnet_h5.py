"""The HDF5 format of OpNet's reference code (opentrack/neuralnet-tracker-traincode): the authors' extended
training sets (RA-300W-LP, LaPa/WFLW large pose) and ``../shared/assets/aflw2kmini.h5``.

One file, top-level datasets of equal length N (each with a ``category`` attribute):

- ``images`` (``storage="varsize_image_buffer"``: vlen uint8 JPEG/PNG bytes; or ``storage="image_filename"``:
  names relative to the file's folder or to ``<file without .h5>/``, extension optional; or a uint8 array
  ``(N, H, W[, 3])``);
- ``quats (N, 4)`` xyzw head -> camera in the package frames (x right, y down; verified against bfm68);
- ``coords (N, 3)``: x, y, head radius px = schema ``head_2d`` (origin between the eyes, ``bfm_mat``);
- ``rois (N, 4)``: x0, y0, x1, y1 (the authors' converters store the 68-landmark extent);
- ``pt3d_68 (N, 68, 3)`` px, z centred on the eye corners and positive away from the camera = the package's
  ``landmarks_3d`` convention (taken as stored); ``pt2d_68 (N, 68, 2)`` where only 2D points exist;
- ``shapeparams (N, 50)`` (float16 or float32) = ``shape_params``.

Any label dataset may be absent; its schema key is then absent for every sample.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch

from .. import geometry as G
from . import bfm_mat
from .raw import LayoutError, RawSource, RecordError, read_image, require_finite

LABELS = ("quats", "coords", "rois", "pt3d_68", "pt2d_68", "shapeparams")
SHAPES = {"quats": (4,), "coords": (3,), "rois": (4,), "pt3d_68": (68, 3), "pt2d_68": (68, 2),
          "shapeparams": (50,)}
BOX_RULES = ("roi", "landmarks", "head")
_EXTENSIONS = (".jpg", ".jpeg", ".png")


class OpNetH5(RawSource):
    """Samples of one OpNet-format HDF5 file.

    Args:
        root: path of the ``.h5`` file.
        split: label only (the file is one split).
        dataset_name: the ``dataset`` string of the samples; default the file name without suffix.
        box: ``"roi"`` (stored ``rois``; default), ``"landmarks"`` (tight box of the stored 68 points) or
            ``"head"`` (``bfm_mat.head_box``: head sphere united with the posed bfm68 points; needs quats + coords).
    """

    name = "opnet_h5"
    euler_rule = "opnet"
    layout = ("<root> = a .h5 file with equal-length datasets 'images' (attr storage=varsize_image_buffer | "
              "image_filename, or uint8 (N,H,W[,3])) and any of 'quats' (N,4 xyzw), 'coords' (N,3 x,y,radius px), "
              "'rois' (N,4), 'pt3d_68' (N,68,3), 'pt2d_68' (N,68,2), 'shapeparams' (N,50), as written by "
              "neuralnet-tracker-traincode")

    def __init__(self, root: str | Path | None, split: str = "test", dataset_name: str | None = None,
                 box: str = "roi"):
        super().__init__(root, split)
        if box not in BOX_RULES:
            raise ValueError(f"unknown box rule {box!r}; choose one of {BOX_RULES}")
        self.box = box
        self.name = dataset_name or self.root.stem
        self._file: h5py.File | None = None
        try:
            with h5py.File(self.root, "r") as f:
                self._inspect(f)
        except OSError as err:
            raise LayoutError(f"{self.name}: {str(self.root)!r} is not a readable HDF5 file ({err}); "
                              f"expected layout:\n{self.layout}") from err

    def _layout_error(self, what: str) -> LayoutError:
        return LayoutError(f"{self.name}: {str(self.root)!r} {what}; expected layout:\n{self.layout}")

    def _inspect(self, f: h5py.File) -> None:
        if "images" not in f:
            raise self._layout_error("has no 'images' dataset")
        images = f["images"]
        self.length = len(images)
        self.labels = [k for k in LABELS if k in f]
        for key in self.labels:
            if f[key].shape != (self.length,) + SHAPES[key]:
                raise self._layout_error(f"dataset {key!r} has shape {f[key].shape}, expected "
                                         f"{(self.length,) + SHAPES[key]}")
        storage = images.attrs.get("storage", None)
        storage = storage.decode() if isinstance(storage, bytes) else storage
        if storage == "image_filename":
            self.storage = "filename"
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in images[:]]
            self.image_paths = [self._find_image(n) for n in names]
        elif storage == "varsize_image_buffer" or (storage is None and images.dtype == object):
            self.storage = "buffer"
        elif storage is None and images.dtype == np.uint8 and images.ndim in (3, 4):
            self.storage = "array"
        else:
            raise self._layout_error(f"has 'images' with storage {storage!r} and dtype {images.dtype}")

    def _find_image(self, name: str) -> Path:
        folders = (self.root.parent, self.root.with_suffix(""))
        exts = ("",) if Path(name).suffix.lower() in _EXTENSIONS else _EXTENSIONS
        for folder in folders:
            for ext in exts:
                if (folder / f"{name}{ext}").is_file():
                    return folder / f"{name}{ext}"
        raise self._layout_error(f"names image {name!r}, found in none of {[str(d) for d in folders]} "
                                 f"(extensions tried: {list(exts)})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None  # h5py handles do not survive pickling (DataLoader / process pool workers)
        return state

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.root, "r")
        return self._file

    def __len__(self) -> int:
        return self.length

    def record_id(self, index: int) -> str:
        return f"{self.name}/{index:06d}"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "dataset_name": self.name, "box": self.box}

    def _image(self, index: int, where: str) -> np.ndarray:
        if self.storage == "filename":
            return read_image(self.image_paths[index])
        raw = np.asarray(self._h5()["images"][index])
        if self.storage == "array":
            img = raw if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=-1)
            return np.ascontiguousarray(img)
        img = cv2.imdecode(raw.astype(np.uint8), cv2.IMREAD_COLOR) if raw.size else None
        if img is None:
            raise RecordError(f"{where}: image bytes cannot be decoded (corrupt or not an image)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def read(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"{self.name}: index {index} out of range [0, {self.length})")
        where = f"{self.name} record {index} of {str(self.root)!r}"
        f = self._h5()
        labels = {k: np.asarray(f[k][index], dtype=np.float64) for k in self.labels}
        require_finite(labels, where)
        image = self._image(index, where)
        sample: dict[str, Any] = {"image": image, "dataset": self.name, "sample_id": self.record_id(index),
                                  "topology": ""}
        R = head_2d = None
        if "quats" in labels:
            q = labels["quats"]
            if np.linalg.norm(q) < 1e-6:
                raise RecordError(f"{where}: quaternion {q.tolist()} has zero norm")
            R = G.quat_to_matrix(torch.from_numpy(q)).numpy()
            sample["R"] = R
        if "coords" in labels:
            head_2d = labels["coords"]
            sample["head_2d"] = head_2d
        if "shapeparams" in labels:
            sample["shape_params"] = labels["shapeparams"]
        points = None
        if "pt3d_68" in labels:
            points = labels["pt3d_68"]
            sample["landmarks_3d"] = points
            sample["landmarks_2d"] = points[:, :2].copy()
        elif "pt2d_68" in labels:
            points = labels["pt2d_68"]
            sample["landmarks_2d"] = points
        if self.box == "roi" and "rois" in labels:
            sample["box"] = labels["rois"]
        elif self.box == "head" or points is None:
            if R is None or head_2d is None:
                raise RecordError(f"{where}: box rule {self.box!r} needs 'quats' and 'coords' (or 'rois'/points)")
            sample["box"] = bfm_mat.head_box(R, head_2d, sample.get("shape_params"))
        else:
            sample["box"] = bfm_mat.landmark_box(points[:, :2])
        return sample
