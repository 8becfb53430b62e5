"""Output conventions of other head-pose methods, converted to hpe_bench's frames (docs/score.md).

Read from the methods' public code (the files are named in the docs); every conversion is pinned by a
hand-derived test in tests/test_score.py.

- **Hopenet** (natanielruiz/deep-head-pose) and **6DRepNet** (thohemp/6DRepNet) report ``(yaw, pitch, roll)``
  in degrees that are 300W-LP / AFLW2000-3D ``Pose_Para`` angles (``pitch, yaw, roll = Pose_Para[:3]``), i.e.
  exactly the ``"opnet"`` Euler rule here (``pose_para_to_matrix`` is inverted by it).
- **6DRepNet's rotation matrix** is ``get_R(pitch, yaw, roll) = Rz(roll) Ry(yaw) Rx(pitch)`` of those same
  angles, which is *not* a head -> camera rotation in this package's frames: with ``D = diag(1, -1, -1)``,
  ``R_hpe = D R_6drepnet^T D`` (``sixdrepnet_matrix_to_matrix``; its own inverse).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EXTERNAL_EULER_RULES", "sixdrepnet_matrix_to_matrix"]

EXTERNAL_EULER_RULES = {"hopenet": "opnet", "6drepnet": "opnet"}
"""The package Euler rule equal to each method's ``(yaw, pitch, roll)`` output (degrees, 300W-LP-trained)."""


def sixdrepnet_matrix_to_matrix(R: Tensor) -> Tensor:
    """6DRepNet's predicted matrix ``(..., 3, 3)`` -> head -> camera rotation here: ``D R^T D``, ``D = diag(1,-1,-1)``.

    Derivation: 6DRepNet builds ``R6 = Rz(r) Ry(y) Rx(p)``; this package's ``pose_para_to_matrix`` is
    ``Rx(-p) Ry(y) Rz(r)``. ``R6^T = Rx(-p) Ry(-y) Rz(-r)``, and conjugating by ``D`` (a half turn about x)
    keeps rotations about x and flips the angle of those about y and z, giving ``Rx(-p) Ry(y) Rz(r)``.
    """
    D = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=R.dtype, device=R.device))
    return D @ R.transpose(-1, -2) @ D
