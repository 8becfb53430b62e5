"""Rotation representations and conversions (torch, batched, differentiable).

Conventions (see docs/conventions.md):
- A rotation is carried as a 3x3 matrix ``R`` acting on column vectors: ``v_cam = R @ v_head + t``.
- Quaternions are ``(x, y, z, w)``: **real part last**, as in scipy and in OpNet's reference code.
  ``matrix_to_quat`` returns the representative with ``w >= 0``.
- 6D representation (Zhou et al. 2019): the first two **columns** of ``R``, concatenated:
  ``(R[0,0], R[1,0], R[2,0], R[0,1], R[1,1], R[2,1])``.
- Rotation vectors (axis * angle, radians) use kornia's Rodrigues implementation.
"""
from __future__ import annotations

import kornia.geometry.conversions as KC
import torch
from torch import Tensor

__all__ = [
    "quat_to_matrix", "matrix_to_quat", "sixd_to_matrix", "matrix_to_sixd",
    "rotvec_to_matrix", "matrix_to_rotvec", "geodesic_angle", "axis_rotation",
    "mirror_rotation", "MIRROR_X", "project_to_so3", "orthonormality_error",
]


def quat_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternion ``(..., 4)`` in ``(x, y, z, w)`` order to rotation matrix ``(..., 3, 3)``.

    The quaternion is normalised first, so ``q`` and ``-q`` and scaled copies give the same matrix.
    """
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z, w = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: Tensor) -> Tensor:
    """Rotation matrix ``(..., 3, 3)`` to unit quaternion ``(..., 4)``, ``(x, y, z, w)``, ``w >= 0``."""
    q_wxyz = KC.rotation_matrix_to_quaternion(R.contiguous(), eps=1e-12)  # kornia: (w, x, y, z)
    q = torch.cat([q_wxyz[..., 1:], q_wxyz[..., :1]], dim=-1)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def sixd_to_matrix(x: Tensor) -> Tensor:
    """6D representation ``(..., 6)`` (two columns) to rotation ``(..., 3, 3)`` by Gram-Schmidt.

    ``b1 = a1/|a1|``, ``b2 = normalize(a2 - (b1.a2) b1)``, ``b3 = b1 x b2``; the columns of R are b1, b2, b3.
    (The cross product names its dimension explicitly: the TRG reference code's ``torch.cross`` without
    ``dim`` is wrong whenever the batch size is 3.)
    """
    a1, a2 = x[..., :3], x[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_sixd(R: Tensor) -> Tensor:
    """Rotation ``(..., 3, 3)`` to its 6D representation ``(..., 6)``: first column, then second column."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rotvec_to_matrix(v: Tensor) -> Tensor:
    """Rotation vector ``(..., 3)`` (axis times angle in radians) to ``(..., 3, 3)``."""
    shape = v.shape[:-1]
    return KC.axis_angle_to_rotation_matrix(v.reshape(-1, 3)).reshape(shape + (3, 3))


def matrix_to_rotvec(R: Tensor) -> Tensor:
    """Rotation ``(..., 3, 3)`` to rotation vector ``(..., 3)`` with angle in ``[0, pi]``."""
    q = matrix_to_quat(R)  # w >= 0 so the angle is in [0, pi]
    vec, w = q[..., :3], q[..., 3]
    s = vec.norm(dim=-1)
    angle = 2.0 * torch.atan2(s, w)
    # angle / sin(angle/2) -> 2 as s -> 0
    scale = torch.where(s > 1e-8, angle / s.clamp_min(1e-12), 2.0 / w.clamp_min(1e-12))
    return vec * scale.unsqueeze(-1)


def geodesic_angle(R1: Tensor, R2: Tensor) -> Tensor:
    """Angle in radians ``(...,)`` of ``R1^T R2``, in ``[0, pi]``.

    Computed as ``atan2(|skew part|, trace - 1)`` rather than ``arccos((tr - 1)/2)``, which loses
    precision near 0 and pi.
    """
    M = R1.transpose(-1, -2) @ R2
    tr = M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2]
    skew = torch.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    return torch.atan2(skew.norm(dim=-1), tr - 1.0)


def axis_rotation(axis: str, angle: Tensor) -> Tensor:
    """Elementary rotation about ``'x'``, ``'y'`` or ``'z'`` by ``angle`` (radians, ``(...,)``) -> ``(..., 3, 3)``.

    Right-handed: ``axis_rotation('z', a) @ (1, 0, 0) = (cos a, sin a, 0)``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "x":
        rows = [o, z, z, z, c, -s, z, s, c]
    elif axis == "y":
        rows = [c, z, s, z, o, z, -s, z, c]
    elif axis == "z":
        rows = [c, -s, z, s, c, z, z, z, o]
    else:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return torch.stack(rows, -1).reshape(angle.shape + (3, 3))


MIRROR_X = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
"""``S = diag(-1, 1, 1)``: a horizontal image flip mirrors the camera x axis."""


def mirror_rotation(R: Tensor) -> Tensor:
    """Rotation of the mirrored head after a horizontal flip: ``S R S`` with ``S = diag(-1, 1, 1)``.

    Valid because the head frame is itself left/right symmetric about its x axis (see conventions).
    Mirroring twice is the identity.
    """
    S = MIRROR_X.to(R)
    return S @ R @ S


def project_to_so3(M: Tensor) -> Tensor:
    """Nearest rotation ``(..., 3, 3)`` to an arbitrary matrix (SVD with determinant fix)."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return U @ D @ Vh


def orthonormality_error(R: Tensor) -> Tensor:
    """How far ``R (..., 3, 3)`` is from a rotation ``(...)``: the largest ``|R^T R - I|`` entry, and ``inf`` for a
    reflection or a degenerate matrix (``det R <= 0``); NaN rows give NaN.

    >>> orthonormality_error(torch.eye(3)).item()
    0.0
    >>> orthonormality_error(torch.diag(torch.tensor([1.0, 1.0, -1.0]))).item()
    inf
    """
    I = torch.eye(3, dtype=R.dtype, device=R.device)
    err = (R.transpose(-1, -2) @ R - I).abs().amax(dim=(-2, -1))
    return torch.where(torch.det(R) > 0, err, torch.where(torch.isnan(err), err, torch.full_like(err, float("inf"))))
