"""Embedded synthetic 6DoF dataset: the ARKit face mesh rendered with random identity, pose, camera,
lighting and background (the default dataset of the suite; no download needed).

Names are resolved lazily so that importing ``hpe_bench.data.synthetic.render`` (generation workers)
does not import torch through ``dataset``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SyntheticDataset": "dataset", "cache_path": "dataset", "generation_settings": "dataset",
    "GENERATOR_VERSION": "render", "SPLIT_IDS": "render", "make_sample": "render", "render_scene": "render",
    "sample_scene": "render", "scene_labels": "render",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
