"""Loaders of the authors' loss reference cases (``shared/reference/losses/*_cases.npz``) into hpe_bench's tensors.

Shared by test_trg_code_loss.py, test_opnet_code_loss.py and test_loss_balance.py (not a test module).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# TRG: project term -> the authors' term name in the npz
TRG_AUTHORS = {"head": "world", "cam": "cam", "img": "img", "rot": "rot", "ed": "edge", "landmarks": "lmk68",
               "landmarks5": "lmk5"}
TRG_BATCH_KEYS = ("vertices", "vertices_mask", "R", "t", "K", "landmarks_2d", "has_vertices", "has_R", "has_t",
                  "has_K", "has_landmarks_2d")
# OpNet: project term -> the authors' criteria whose contributions it sums
OPNET_AUTHORS = {"rot": ("rot",), "coord": ("xy", "sz"), "quat_norm": ("quatregularization1",),
                 "nll_rot": ("nllrot",), "nll_coord": ("nllcoord",), "points": ("points3d",),
                 "nll_points": ("nllpoints3d",), "shape": ("shp_l2",), "nll_shape": ("nllshape",), "roi": ("box",),
                 "nll_roi": ("nllbox",)}
OPNET_PRED_KEYS = ("quat", "quat_raw", "coord", "rot_scale_tril", "coord_scale_tril", "roi", "roi_scale",
                   "landmarks_crop", "points_scale", "shape_params", "shape_scale")
OPNET_TARGET_KEYS = ("quat", "coord", "roi", "shape_params", "landmarks_crop")


def read_cases(shared_reference: Path, name: str) -> dict[str, np.ndarray]:
    """All arrays of ``losses/<name>.npz``; skips the test when the file is absent."""
    path = shared_reference / "losses" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _ref(z: dict, case: str) -> dict:
    return {k[len(case) + 5:]: v for k, v in z.items() if k.startswith(f"{case}/ref/")}


def load_trg_case(z: dict, case: str):
    """``(pred, batch, inputs, ref)`` of a TRG case; D is C restricted to ``D/from_C_samples``. ``inputs["K"]`` is
    the authors' full-image K (``ref_in/K`` = [K^T; 0]: the sample's K, f = 5000 for 300W-LP), the intrinsics the
    network used for its translation."""
    src, keep = (case, slice(None)) if case != "D" else ("C", torch.as_tensor(z["D/from_C_samples"]))
    g = lambda k: torch.as_tensor(z[f"{src}/{k}"])  # noqa: E731
    pred = {k: list(g(f"pred/{k}")[:, keep]) for k in ("R_iters", "t_iters", "vertices_iters")}
    pred["heatmap_landmarks"] = g("pred/heatmap_landmarks")[keep]
    batch = {k: g(f"batch/{k}")[keep] for k in TRG_BATCH_KEYS}
    S = int(z[f"{src}/pred/crop_size"])
    K_authors = g("ref_in/K")[keep][:, :3, :].transpose(-1, -2)
    B = len(batch["R"])
    inputs = {"image": torch.zeros(B, 3, S, S, dtype=torch.float64), "A": g("pred/A")[keep], "K": K_authors}
    return pred, batch, inputs, _ref(z, case)


def load_opnet_case(z: dict, case: str):
    """``(pred, targets, ref)`` of an OpNet case (crop-space targets, as ``codecs.opnet.encode`` returns them)."""
    g = lambda k: torch.as_tensor(z[f"{case}/{k}"])  # noqa: E731
    pred = {k: g(f"pred/{k}") for k in OPNET_PRED_KEYS}
    targets = {k: g(f"batch/{k}") for k in OPNET_TARGET_KEYS}
    targets.update({f"has_{k}": g(f"batch/has_{k}") for k in OPNET_TARGET_KEYS + ("landmarks_crop_z",)})
    return pred, targets, _ref(z, case)
