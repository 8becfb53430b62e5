"""Frame changes of the datasets' native conventions into the package's (see docs/conventions.md).

- **OpenGL -> OpenCV** (ARKitFace): OpenGL cameras look down ``-z`` with ``y`` up; OpenCV cameras look down
  ``+z`` with ``y`` down. Both frames are right-handed and differ by ``F = diag(1, -1, -1)`` (a rotation of
  180 deg about x), so a point ``v -> F v``, a pose ``R -> F R F``, ``t -> F t``. ARKit's face frame (x to the
  subject's left, y up, z out of the face) becomes the package head frame under the same ``F``.
- **Row-vector 4x4 poses** (ARKitFace ``R_t``, TRG's code): ``[x y z 1] @ M`` with ``M = [[R^T, 0], [t, 1]]``.
- **OpenGL projection matrices** in that row-vector form (``clip = [x y z 1] @ P``, ``P[2, 3] = -1``) give
  pixel intrinsics through the viewport ``u = (ndc_x + 1) W / 2``, ``v = (1 - ndc_y) H / 2``.
- **BIWI**: pose files map the subject's template into the depth camera, ``v_depth = R v + T`` (mm), and
  ``rgb.cal`` maps depth-camera points into the RGB camera, ``v_rgb = R_ext v_depth + T_ext``; the template
  ``.obj`` is stored with y up and the nose toward +z, i.e. ``F`` of the frame the pose files use.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "flip_yz", "row_vector_pose", "opengl_to_opencv_pose", "opengl_to_opencv_points",
    "opengl_projection_to_intrinsics", "compose_pose", "biwi_template_to_head",
]


def flip_yz(like: Tensor) -> Tensor:
    """``F = diag(1, -1, -1)`` ``(3, 3)`` with the dtype/device of ``like``: OpenGL <-> OpenCV (it is its own inverse)."""
    return torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=like.dtype, device=like.device))


def row_vector_pose(M: Tensor) -> tuple[Tensor, Tensor]:
    """``(R (..., 3, 3), t (..., 3))`` of a row-vector pose ``M (..., 4, 4)`` (``[x y z 1] @ M = (R v + t)^T``)."""
    return M[..., :3, :3].transpose(-1, -2), M[..., 3, :3]


def opengl_to_opencv_pose(R_gl: Tensor, t_gl: Tensor) -> tuple[Tensor, Tensor]:
    """Pose of an OpenGL camera with an OpenGL-style model frame -> OpenCV camera and ``F``-flipped model frame.

    ``R (..., 3, 3) = F R_gl F``, ``t (..., 3) = F t_gl``; together with ``opengl_to_opencv_points`` on the model
    it keeps ``v_cam`` the same physical point: ``F (R_gl v + t_gl) = (F R_gl F)(F v) + F t_gl``.
    """
    F = flip_yz(R_gl)
    return F @ R_gl @ F, t_gl * torch.diagonal(F)


def opengl_to_opencv_points(points: Tensor) -> Tensor:
    """Points ``(..., N, 3)`` from an OpenGL-style frame (y up, z toward the viewer) to OpenCV-style: ``F v``."""
    return points * torch.tensor([1.0, -1.0, -1.0], dtype=points.dtype, device=points.device)


def opengl_projection_to_intrinsics(P: Tensor, width: int, height: int) -> Tensor:
    """Pixel intrinsics ``K (..., 3, 3)`` (OpenCV camera) of a row-vector OpenGL projection ``P (..., 4, 4)``.

    With ``X = x, Y = -y, Z = -z``: ``fx = P00 W/2``, ``fy = P11 H/2``, ``cx = (1 - P20) W/2``,
    ``cy = (1 + P21) H/2``. The GL viewport puts pixel *edges* at integers, so for a centred projection the
    principal point is ``(W/2, H/2)``: TRG's rule, half a pixel off the package's pixel-centre convention
    (labels derived through this ``K`` are consistent with it; only the image content is 0.5 px off).
    """
    half_w, half_h = width / 2.0, height / 2.0
    z = torch.zeros_like(P[..., 0, 0])
    rows = [P[..., 0, 0] * half_w, z, (1 - P[..., 2, 0]) * half_w,
            z, P[..., 1, 1] * half_h, (1 + P[..., 2, 1]) * half_h,
            z, z, z + 1]
    return torch.stack(rows, -1).reshape(P.shape[:-2] + (3, 3))


def compose_pose(R_outer: Tensor, t_outer: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Pose ``(R, t)`` followed by the frame change ``(R_outer, t_outer)``: ``(R_outer R, R_outer t + t_outer)``.

    BIWI: ``compose_pose(R_ext, T_ext, R_head, T_head)`` moves the depth-camera pose into the RGB camera.
    Shapes ``(..., 3, 3)`` and ``(..., 3)``.
    """
    return R_outer @ R, (R_outer @ t.unsqueeze(-1)).squeeze(-1) + t_outer


def biwi_template_to_head(vertices_mm: Tensor) -> Tensor:
    """BIWI template ``.obj`` vertices ``(..., N, 3)`` (mm, y up, nose toward +z) -> head frame, metres.

    The pose files rotate the template only after this flip (PerspNet's BIWI preprocessing applies
    ``diag(1, -1, -1)`` to the ``.obj``; a frontal face has ``R ~ I`` with ``t_z > 0``, so the pose's model
    frame has the nose toward -z, the camera): ``v_head = F v / 1000``.
    """
    return opengl_to_opencv_points(vertices_mm) / 1000.0
