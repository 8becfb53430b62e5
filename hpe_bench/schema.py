"""The sample schema shared by every dataset, and batch collation that keeps availability masks.

A **sample** is a plain dict produced by a dataset's ``__getitem__``:

- ``image``: ``uint8 (H, W, 3)`` RGB numpy array (channel order is always RGB; decoders convert).
- ``box``: ``(4,)`` face box ``(x0, y0, x1, y1)`` in pixels of ``image`` (always present).
- ``dataset`` (str), ``sample_id`` (str), ``topology`` (str, the dense-vertex topology, "" if none).
- optional label fields (absent key = label not available), see ``FIELDS``:
  ``K (3, 3)`` intrinsics of ``image``; ``R (3, 3)`` head-to-camera rotation; ``t (3,)`` head centre in the
  camera frame, metres; ``landmarks_2d (68, 2)`` pixels; ``landmarks_3d (68, 3)`` image-space 3D landmarks
  (x, y pixels, z relative depth in pixels, see ``geometry.depth_relative_points``); ``vertices (N, 3)``
  dense head-frame vertices in metres; ``shape_params (50,)`` (40 identity + 10 expression, BFM 68 model);
  ``head_2d (3,)`` orthographic head position and size, OpNet's ``coord``: x, y (pixels) and size (pixels per
  unit of the BFM 68 model, so ``landmarks_3d ~ R @ local * size + (x, y, 0)``); ``K_fallback (3, 3)`` the
  intrinsics *assumed* for an image whose dataset has none (``geometry.fallback_intrinsics`` of the original
  image, carried through any crop) -- a model may use it, a metric must not treat it as a label.

All frames follow docs/conventions.md. A **batch** (``collate``) holds ``image (B, 3, H, W) uint8``, one
float32 tensor per field (zeros where absent), a ``has_<field>`` bool tensor ``(B,)`` per field,
``vertices`` padded to ``(B, N_max, 3)`` with ``vertices_mask (B, N_max)``, and the string lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch

NUM_LANDMARKS = 68
NUM_SHAPE_PARAMS = 50


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple  # None marks a variable dimension
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("K", (3, 3), "intrinsics of the image, pixels"),
    Field("R", (3, 3), "rotation head -> camera"),
    Field("t", (3,), "head centre in the camera frame, metres"),
    Field("landmarks_2d", (NUM_LANDMARKS, 2), "68 iBUG landmarks, pixels"),
    Field("landmarks_3d", (NUM_LANDMARKS, 3), "68 landmarks, image space (x, y px; z px relative depth)"),
    Field("vertices", (None, 3), "dense head-frame vertices, metres"),
    Field("shape_params", (NUM_SHAPE_PARAMS,), "40 identity + 10 expression BFM coefficients"),
    Field("head_2d", (3,), "orthographic head centre x, y and size, pixels (OpNet coord)"),
    Field("K_fallback", (3, 3), "assumed intrinsics of an image without K (f = W + H of the original image)"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
_BY_NAME = {f.name: f for f in FIELDS}
META_KEYS = ("dataset", "sample_id", "topology")


class SampleError(ValueError):
    """A sample violates the schema; the message names the sample and the field."""


def validate_sample(sample: Mapping[str, Any], where: str = "") -> None:
    """Check shapes, dtypes and finiteness of a sample; raise ``SampleError`` naming ``where`` and the field."""
    sid = f"{where}{' ' if where else ''}sample {sample.get('sample_id', '?')!r}"
    img = sample.get("image")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = getattr(img, "shape", type(img).__name__)
        raise SampleError(f"{sid}: 'image' must be a uint8 (H, W, 3) RGB array, got {got}")
    for key in ("box",) + tuple(k for k in FIELD_NAMES if k in sample):
        shape = (4,) if key == "box" else _BY_NAME[key].shape
        val = np.asarray(sample[key])
        if val.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, val.shape)):
            raise SampleError(f"{sid}: field {key!r} has shape {val.shape}, expected {shape}")
        if not np.all(np.isfinite(val)):
            raise SampleError(f"{sid}: field {key!r} contains NaN or inf")
    box = np.asarray(sample["box"])
    if not (box[2] > box[0] and box[3] > box[1]):
        raise SampleError(f"{sid}: 'box' {box.tolist()} is empty (need x1 > x0 and y1 > y0)")
    for key in META_KEYS:
        if not isinstance(sample.get(key, ""), str):
            raise SampleError(f"{sid}: {key!r} must be a string")


def collate(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch; absent labels become zeros with ``has_<field> = False``."""
    samples = list(samples)
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    shapes = {s["image"].shape for s in samples}
    if len(shapes) != 1:
        ids = [s.get("sample_id", "?") for s in samples]
        raise SampleError(f"images in one batch must share a size, got {sorted(shapes)} for samples {ids}")
    batch: dict[str, Any] = {
        "image": torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2).contiguous(),
        "box": torch.as_tensor(np.stack([np.asarray(s["box"], np.float32) for s in samples])),
    }
    for key in META_KEYS:
        batch[key] = [str(s.get(key, "")) for s in samples]
    n = len(samples)
    for f in FIELDS:
        has = torch.tensor([f.name in s for s in samples], dtype=torch.bool)
        batch[f"has_{f.name}"] = has
        if f.name == "vertices":
            counts = [len(s["vertices"]) if "vertices" in s else 0 for s in samples]
            nmax = max(counts)
            out = torch.zeros(n, nmax, 3)
            mask = torch.zeros(n, nmax, dtype=torch.bool)
            for i, (s, c) in enumerate(zip(samples, counts)):
                if c:
                    out[i, :c] = torch.as_tensor(np.asarray(s["vertices"], np.float32))
                    mask[i, :c] = True
            batch["vertices"], batch["vertices_mask"] = out, mask
            continue
        out = torch.zeros((n,) + f.shape)
        for i, s in enumerate(samples):
            if f.name in s:
                out[i] = torch.as_tensor(np.asarray(s[f.name], np.float32))
        batch[f.name] = out
    return batch
