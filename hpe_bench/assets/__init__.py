"""Small face-model assets shipped with the package (provenance in hpe_bench/assets/README.md).

- ``arkit_face.npz``: ARKit 1220-vertex face (TRG-Release, MIT): ``mean_vertices (1220, 3)`` metres in the
  package head frame, ``triangles (2304, 3)``, ``subsample_305``, ``keypoints_68``, ``init_rotation``,
  ``init_translation``, ``arkit_projection``.
- ``bfm68.npz``: BFM restricted to the 68 iBUG keypoints (3DDFA, MIT; Basel Face Model): ``mean (68, 3)``,
  ``basis (68, 3, 50)`` in OpNet's head frame and scale.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch

ARKIT_TOPOLOGY = "arkit1220"


@lru_cache(maxsize=None)
def load_npz(name: str) -> dict[str, np.ndarray]:
    """Arrays of the shipped asset ``name`` (e.g. ``"arkit_face.npz"``), read once."""
    with resources.files(__package__).joinpath(name).open("rb") as fh:
        with np.load(fh) as data:
            return {k: data[k] for k in data.files}


def arkit_face() -> dict[str, np.ndarray]:
    return load_npz("arkit_face.npz")


def bfm68() -> dict[str, np.ndarray]:
    return load_npz("bfm68.npz")


def topology_triangles(topology: str) -> torch.Tensor:
    """Triangles ``(F, 3)`` int64 of a named dense-vertex topology; ``KeyError`` names the known ones."""
    known = {ARKIT_TOPOLOGY: lambda: arkit_face()["triangles"]}
    if topology not in known:
        raise KeyError(f"unknown vertex topology {topology!r}; known: {sorted(known)}")
    return torch.as_tensor(known[topology](), dtype=torch.long)
