"""Euler-angle rules: the per-axis (yaw, pitch, roll) numbers that papers report.

Per-axis numbers depend on a rule; geodesic error does not. Each rule is named and selectable:

``"opnet"`` (OpNet, 300W-LP/AFLW2000 ``Pose_Para``): ``(a, b, c) = scipy as_euler('XYZ')`` (intrinsic),
    i.e. ``R = Rx(a) Ry(b) Rz(c)``; ``pitch = -a``, ``yaw = b``, ``roll = c``. Errors are wrapped
    to ``[0, 180]`` degrees. Positive pitch looks up, positive yaw turns the nose toward image left.
``"trg"`` (TRG): ``(yaw, pitch, roll) = scipy as_euler('yxz')`` (extrinsic), i.e.
    ``R = Rz(roll) Rx(pitch) Ry(yaw)``; errors are plain absolute differences (no wrapping).
    Positive pitch looks down.

All functions return and take angles in **degrees** in the order ``(yaw, pitch, roll)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .rotations import axis_rotation

__all__ = ["EULER_RULES", "matrix_to_euler", "euler_to_matrix", "euler_errors", "pose_para_to_matrix",
           "opal23_to_matrix", "check_rule"]

EULER_RULES = ("opnet", "trg")


def check_rule(rule: str) -> str:
    if rule not in EULER_RULES:
        raise ValueError(f"unknown Euler rule {rule!r}; choose one of {EULER_RULES}")
    return rule


def _xyz_intrinsic(R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Angles (a, b, c) with R = Rx(a) Ry(b) Rz(c) (scipy 'XYZ'), radians."""
    a = torch.atan2(-R[..., 1, 2], R[..., 2, 2])
    b = torch.atan2(R[..., 0, 2], torch.hypot(R[..., 0, 0], R[..., 0, 1]))
    c = torch.atan2(-R[..., 0, 1], R[..., 0, 0])
    return a, b, c


def _yxz_extrinsic(R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Angles (yaw, pitch, roll) with R = Rz(roll) Rx(pitch) Ry(yaw) (scipy 'yxz'), radians."""
    yaw = torch.atan2(-R[..., 2, 0], R[..., 2, 2])
    pitch = torch.atan2(R[..., 2, 1], torch.hypot(R[..., 2, 0], R[..., 2, 2]))
    roll = torch.atan2(-R[..., 0, 1], R[..., 1, 1])
    return yaw, pitch, roll


def matrix_to_euler(R: Tensor, rule: str) -> Tensor:
    """Rotation ``(..., 3, 3)`` to ``(..., 3)`` = (yaw, pitch, roll) in degrees under ``rule``."""
    if check_rule(rule) == "opnet":
        a, b, c = _xyz_intrinsic(R)
        ypr = torch.stack([b, -a, c], -1)
    else:
        ypr = torch.stack(_yxz_extrinsic(R), -1)
    return torch.rad2deg(ypr)


def euler_to_matrix(ypr_deg: Tensor, rule: str) -> Tensor:
    """``(..., 3)`` = (yaw, pitch, roll) in degrees under ``rule`` to a rotation ``(..., 3, 3)``."""
    yaw, pitch, roll = torch.deg2rad(ypr_deg).unbind(-1)
    if check_rule(rule) == "opnet":
        return axis_rotation("x", -pitch) @ axis_rotation("y", yaw) @ axis_rotation("z", roll)
    return axis_rotation("z", roll) @ axis_rotation("x", pitch) @ axis_rotation("y", yaw)


def euler_errors(R_pred: Tensor, R_gt: Tensor, rule: str) -> Tensor:
    """Absolute per-axis errors ``(..., 3)`` (yaw, pitch, roll) in degrees under ``rule``.

    ``"opnet"`` wraps each difference into ``[0, 180]``; ``"trg"`` reports plain differences, as the
    respective papers do (the TRG numbers can therefore exceed 180 near the +-180 seam).
    """
    d = matrix_to_euler(R_pred, rule) - matrix_to_euler(R_gt, rule)
    if rule == "opnet":
        d = wrap_degrees(d)
    return d.abs()


def pose_para_to_matrix(pitch: Tensor, yaw: Tensor, roll: Tensor) -> Tensor:
    """300W-LP / AFLW2000-3D ``Pose_Para[:3] = (pitch, yaw, roll)`` in **radians** to ``R`` ``(..., 3, 3)``.

    ``R = scipy Rotation.from_euler('XYZ', [-pitch, yaw, roll])`` in the head/camera frames of this
    package (verified on the real AFLW2000-3D labels, see ../shared/reference/opnet.md). The "opnet"
    Euler rule inverts it exactly: ``matrix_to_euler(R, "opnet") == degrees(yaw, pitch, roll)``.
    """
    return axis_rotation("x", -pitch) @ axis_rotation("y", yaw) @ axis_rotation("z", roll)


def opal23_to_matrix(ypr_deg: Tensor) -> Tensor:
    """Labels of the opal23 protocol files (``image;yaw;pitch;roll``, degrees) ``(..., 3)`` to ``R`` ``(..., 3, 3)``.

    opal23's yaw has the **opposite sign** to the "opnet" rule (and to ``Pose_Para``'s yaw as converted by
    ``pose_para_to_matrix``); pitch and roll agree: ``R = euler_to_matrix((-yaw, pitch, roll), "opnet")``.
    Measured, not assumed: on the 16 AFLW2000-3D samples of ``aflw2kmini.h5`` the "opnet" angles of OpNet's
    quaternions equal ``(-yaw, pitch, roll)`` of the matching opal23 rows to 1e-5 deg, and the 68 landmarks of all
    2000 rows fit the rotated BFM mean shape only with this sign (tests/test_geometry.py).
    """
    ypr = ypr_deg * ypr_deg.new_tensor([-1.0, 1.0, 1.0])
    return euler_to_matrix(ypr, "opnet")


def wrap_degrees(a: Tensor) -> Tensor:
    """Wrap angles in degrees to ``[-180, 180)``."""
    return torch.remainder(a + 180.0, 360.0) - 180.0


