"""Embedded synthetic 6DoF dataset: the ARKit face mesh rendered with random identity, pose, camera,
lighting and background (the default dataset of the suite; no download needed).

Modules: ``scene`` (scene sampling and labels), ``raster`` (the OpenCV rasteriser), ``dataset`` (the HDF5
cache). Names are resolved lazily so that importing ``hpe_bench.data.synthetic.raster`` (generation
workers) does not import torch through ``dataset``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SyntheticDataset": "dataset", "cache_path": "dataset", "generation_settings": "dataset",
    "GENERATOR_VERSION": "scene", "SPLIT_IDS": "scene", "sample_scene": "scene", "scene_labels": "scene",
    "make_sample": "raster", "render_scene": "raster",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
