"""Camera model, projection, boxes and crops (torch, batched).

Conventions (see docs/conventions.md):
- Camera frame: OpenCV, x right, y down, z forward (into the scene). Metres.
- Pose: ``v_cam = R @ v_head + t``.
- Pixels: OpenCV convention, the centre of pixel (row i, column j) is at ``(x, y) = (j, i)``;
  an image of width W spans ``x in [-0.5, W - 0.5]``.
- Pinhole: ``u = fx X / Z + cx``, ``v = fy Y / Z + cy``; ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
- Boxes: ``(x0, y0, x1, y1)`` in pixel coordinates of the same convention.
- A crop of ``box`` resized to ``(out_w, out_h)`` is the affine map ``x' = (x - x0) out_w / (x1 - x0)``
  (likewise y); it is a 3x3 matrix ``A`` and the crop's intrinsics are ``A @ K``. Images are warped
  with that same ``A`` (``crop_images``), so image, landmarks and intrinsics always agree.
"""
from __future__ import annotations


import kornia.geometry.transform as KT
import torch
from torch import Tensor

__all__ = [
    "transform_points", "project_points", "make_intrinsics", "intrinsics_from_fov", "fallback_intrinsics",
    "box_from_points", "square_box", "crop_transform", "crop_intrinsics", "apply_transform_2d",
    "crop_images", "ray_rotation", "depth_relative_points", "crop_to_normalized", "normalized_to_crop",
    "normalized_per_crop_pixel",
    "similarity_transform", "det2", "similarity_scale", "similarity_rotation", "similarity_camera", "similarity_pose",
    "affine_size_scale", "affine_rotation",
    "apply_similarity_3d",
    "transform_boxes", "box_features",
]


def transform_points(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Head-frame points ``(..., N, 3)`` to camera frame with ``R (..., 3, 3)``, ``t (..., 3)``."""
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)


def project_points(points_cam: Tensor, K: Tensor) -> Tensor:
    """Pinhole projection of camera-frame points ``(..., N, 3)`` with ``K (..., 3, 3)`` -> pixels ``(..., N, 2)``."""
    p = points_cam @ K.transpose(-1, -2)
    return p[..., :2] / p[..., 2:3]


def make_intrinsics(fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """``K (..., 3, 3)`` from focal lengths and principal point (pixels), each ``(...,)``."""
    z, o = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, z, cx, z, fy, cy, z, z, o], -1).reshape(fx.shape + (3, 3))


def intrinsics_from_fov(fov_x_deg: Tensor, width: int, height: int, cx: Tensor | None = None,
                        cy: Tensor | None = None) -> Tensor:
    """Square-pixel ``K`` with horizontal field of view ``fov_x_deg (...,)``.

    ``f = (W / 2) / tan(fov / 2)``; the principal point defaults to the image centre ``((W-1)/2, (H-1)/2)``,
    so with the defaults the horizontal fov spans the pixel edges: a ray at ``+-fov/2`` lands on
    ``x = W - 0.5`` / ``x = -0.5``. A floating-point tensor keeps its dtype; anything else becomes float32.
    """
    fov = torch.as_tensor(fov_x_deg)
    fov = fov if fov.is_floating_point() else fov.to(torch.float32)
    f = (width / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)
    cx = torch.full_like(f, (width - 1) / 2.0) if cx is None else torch.as_tensor(cx).to(f)
    cy = torch.full_like(f, (height - 1) / 2.0) if cy is None else torch.as_tensor(cy).to(f)
    return make_intrinsics(f, f, cx, cy)


def fallback_intrinsics(width: int, height: int, dtype=torch.float32) -> Tensor:
    """Intrinsics for images that come without them: ``f = W + H``, principal point ``(W/2, H/2)``.

    hpe_bench's own rule (a field of view of about 53 deg for a square image); metric translation is then only
    relative. Datasets that use it mark ``K`` as unavailable for metrics. It is not TRG's: TRG-Release uses
    ``f = 5000`` px and the image centre for 300W-LP and in its demo (docs/reproducing.md, "TRG").
    """
    f = torch.tensor(float(width + height), dtype=dtype)
    return make_intrinsics(f, f, torch.tensor(width / 2.0, dtype=dtype), torch.tensor(height / 2.0, dtype=dtype))


def box_from_points(points: Tensor) -> Tensor:
    """Tight box ``(..., 4)`` = (x0, y0, x1, y1) of 2D points ``(..., N, 2)``."""
    return torch.cat([points.amin(-2), points.amax(-2)], -1)


def square_box(box: Tensor, scale: float = 1.0) -> Tensor:
    """Square box ``(..., 4)`` with the same centre and side ``scale * max(w, h)``."""
    c = (box[..., :2] + box[..., 2:]) / 2.0
    half = (box[..., 2:] - box[..., :2]).amax(-1, keepdim=True) * (scale / 2.0)
    return torch.cat([c - half, c + half], -1)


def crop_transform(box: Tensor, out_size: int | tuple[int, int]) -> Tensor:
    """Affine ``A (..., 3, 3)`` taking full-image pixels to crop pixels for ``box (..., 4)``.

    ``x' = (x - x0) * out_w / (x1 - x0)``, ``y' = (y - y0) * out_h / (y1 - y0)``.

    The box corner ``(x0, y0)`` lands on the *centre* of crop pixel (0, 0) and the box centre on
    ``(out_w / 2, out_h / 2)``, half a crop pixel right/below the crop's centre ``((out_w-1)/2, (out_h-1)/2)``.
    This is TRG's rule (``cx' = (cx - l) S / b``); it is harmless because images, points and intrinsics all
    go through this one matrix. A box ``(0, 0, W, H)`` at output size ``(W, H)`` is the identity.
    """
    out_w, out_h = (out_size, out_size) if isinstance(out_size, int) else out_size
    sx = out_w / (box[..., 2] - box[..., 0])
    sy = out_h / (box[..., 3] - box[..., 1])
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    rows = [sx, z, -box[..., 0] * sx, z, sy, -box[..., 1] * sy, z, z, o]
    return torch.stack(rows, -1).reshape(box.shape[:-1] + (3, 3))


def box_features(box: Tensor, K: Tensor) -> Tensor:
    """TRG's I_bbox ``(..., 3)`` = ``((cx_box - cx) / f, (cy_box - cy) / f, side / f)`` of a square crop
    ``box (..., 4)`` (full-image px) under intrinsics ``K (..., 3, 3)`` (``f = fx``)."""
    f = K[..., 0, 0]
    centre = (box[..., :2] + box[..., 2:]) / 2.0
    return torch.stack([(centre[..., 0] - K[..., 0, 2]) / f, (centre[..., 1] - K[..., 1, 2]) / f,
                        (box[..., 2] - box[..., 0]) / f], -1)


def crop_intrinsics(K: Tensor, box: Tensor, out_size: int | tuple[int, int]) -> Tensor:
    """Intrinsics ``(..., 3, 3)`` of the crop of ``box`` resized to ``out_size``: ``A @ K``.

    For a square box (l, t, side b) resized to S: ``fx' = fx S/b``, ``cx' = (cx - l) S/b`` (TRG supp.).
    """
    return crop_transform(box, out_size) @ K


def apply_transform_2d(A: Tensor, points: Tensor) -> Tensor:
    """Apply a 3x3 affine/homography ``A (..., 3, 3)`` to 2D points ``(..., N, 2)``."""
    p = points @ A[..., :2, :2].transpose(-1, -2) + A[..., :2, 2].unsqueeze(-2)
    # Always divide (w is exactly 1 for an affine A, so this is exact): no data-dependent branch, which
    # keeps the function traceable for ONNX export.
    w = points @ A[..., 2, :2].unsqueeze(-1) + A[..., 2, 2].unsqueeze(-1).unsqueeze(-1)
    return p / w


def crop_images(images: Tensor, box: Tensor, out_size: int | tuple[int, int], mode: str = "bilinear",
                padding_mode: str = "zeros") -> Tensor:
    """Crop-and-resize ``images (B, C, H, W)`` (float) to ``box (B, 4)`` -> ``(B, C, out_h, out_w)``.

    Uses the exact matrix of ``crop_transform`` (kornia ``warp_affine`` with ``align_corners=True``,
    whose pixel coordinates follow the OpenCV integer-centre convention), so labels mapped with
    ``apply_transform_2d(crop_transform(box, S), ...)`` land on the same content.
    """
    out_w, out_h = (out_size, out_size) if isinstance(out_size, int) else out_size
    A = crop_transform(box.to(images.dtype), (out_w, out_h))
    return KT.warp_affine(images, A[:, :2, :], (out_h, out_w), mode=mode, padding_mode=padding_mode,
                          align_corners=True)


def normalized_per_crop_pixel(size: int) -> float:
    """Normalised units per crop pixel, the linear factor of ``crop_to_normalized`` (to convert lengths)."""
    return 2.0 / (size - 1)


def crop_to_normalized(points: Tensor, size: int) -> Tensor:
    """Crop pixels ``(..., 2)`` (``x in [0, S-1]``, integer pixel centres) -> ``[-1, 1]``, exactly as
    ``grid_sample(align_corners=True)`` reads a feature map covering the crop."""
    return points * normalized_per_crop_pixel(size) - 1.0


def normalized_to_crop(points: Tensor, size: int) -> Tensor:
    """Inverse of ``crop_to_normalized``: ``[-1, 1]`` -> crop pixels ``(..., 2)``."""
    return (points + 1.0) * ((size - 1) / 2.0)


def ray_rotation(K: Tensor, uv: Tensor) -> Tensor:
    """Minimal rotation ``(..., 3, 3)`` taking the optical axis ``(0, 0, 1)`` onto the ray through pixel ``uv``.

    Used for perspective correction of crop-relative orientations: an object seen at the centre of an
    off-axis crop with orientation ``R_local`` (relative to the crop's viewing ray) has camera-frame
    orientation ``ray_rotation(K, uv) @ R_local``. Axis ``z x d``, angle ``acos(d_z)``.
    """
    ones = torch.ones_like(uv[..., :1])
    d = torch.cat([uv, ones], -1).unsqueeze(-1)
    d = (torch.linalg.inv(K) @ d).squeeze(-1)
    d = d / d.norm(dim=-1, keepdim=True)
    axis = torch.stack([-d[..., 1], d[..., 0], torch.zeros_like(d[..., 0])], -1)  # z x d
    s = axis.norm(dim=-1, keepdim=True)
    c = d[..., 2:3]
    k = axis / s.clamp_min(1e-12)
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    Kx = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(k.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=uv.dtype, device=uv.device).expand_as(Kx)
    s, c = s.unsqueeze(-1), c.unsqueeze(-1)
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def depth_relative_points(points_cam: Tensor, K: Tensor, t: Tensor) -> Tensor:
    """Image-space 3D landmarks ``(..., N, 3)``: projected ``(u, v)`` and depth relative to the head centre
    in pixel units at the head's distance, ``z_px = (Z - t_z) * fx / t_z`` (positive away from the camera).

    This is the "pt3d" convention of 300W-LP/AFLW2000 and OpNet, extended to perspective cameras.
    """
    uv = project_points(points_cam, K)
    tz = t[..., 2:3]
    z = (points_cam[..., 2] - tz) * K[..., 0, 0].unsqueeze(-1) / tz
    return torch.cat([uv, z.unsqueeze(-1)], -1)




# -- image similarities (augmentation) ----------------------------------------------------------------------
# A 2D similarity or reflection of the image, x' = s Q x + b with Q orthogonal (2, 2), is exact for a pinhole
# camera: it equals moving the camera-frame points by Q3 = blockdiag(Q, 1) (a rotation about the optical axis,
# improper when Q is a reflection; depths Z are unchanged) and replacing K by K' = S K Q3^T. So every label can
# follow an image warp exactly (docs/augmentation.md).


def similarity_transform(centre_in: Tensor, centre_out: Tensor, scale: Tensor, angle: Tensor,
                         mirror: Tensor | None = None) -> Tensor:
    """Image similarity ``S (B, 3, 3)``: ``x' = centre_out + scale Rot(angle) F (x - centre_in)``.

    ``centre_in, centre_out (B, 2)`` pixels; ``scale (B,)``; ``angle (B,)`` radians, ``Rot`` with the sign of
    ``axis_rotation('z', angle)`` (positive = clockwise on screen, y points down); ``mirror (B,)`` bool,
    ``F = diag(-1, 1)`` where true (a horizontal flip about ``centre_in``, applied before the rotation).
    """
    c, s = torch.cos(angle), torch.sin(angle)
    fx = torch.ones_like(c) if mirror is None else 1.0 - 2.0 * mirror.to(c)
    Q = torch.stack([c * fx, -s, s * fx, c], -1).reshape(angle.shape + (2, 2))
    sQ = Q * scale[..., None, None]
    b = centre_out - (sQ @ centre_in.unsqueeze(-1)).squeeze(-1)
    S = torch.zeros(angle.shape + (3, 3), dtype=c.dtype, device=c.device)
    S[..., :2, :2], S[..., :2, 2], S[..., 2, 2] = sQ, b, 1.0
    return S


def det2(A: Tensor) -> Tensor:
    """Determinant ``(...,)`` of 2x2 matrices ``A (..., 2, 2)`` in closed form (``torch.linalg.det`` runs an LU
    factorisation: ~10x the cost on the tiny per-sample matrices of the working crop)."""
    return A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]


def similarity_scale(S: Tensor, atol: float = 1e-4) -> Tensor:
    """Scale ``s (B,)`` of a similarity/reflection ``S (B, 3, 3)``; ``ValueError`` if ``S`` is not one."""
    A = S[..., :2, :2]
    s = det2(A).abs().sqrt()
    gram = A @ A.transpose(-1, -2) / (s * s).clamp_min(1e-30)[..., None, None]
    eye = torch.eye(2, dtype=S.dtype, device=S.device)
    if not torch.allclose(gram, eye.expand_as(gram), atol=atol) or not torch.all(S[..., 2, :2] == 0):
        raise ValueError("expected a 2D similarity x' = s Q x + b with Q orthogonal (no shear, no perspective)")
    return s


def similarity_rotation(S: Tensor, scale: Tensor | None = None) -> Tensor:
    """``Q3 = blockdiag(Q, 1) (B, 3, 3)`` of a similarity/reflection ``S = [[s Q, b], [0, 1]]``: the camera-frame
    rotation about the optical axis (det -1 for a reflection) that warping the image by ``S`` amounts to.
    ``scale (B,)``: ``similarity_scale(S)`` if already known (skips checking ``S`` again)."""
    s = similarity_scale(S) if scale is None else scale
    Q3 = torch.zeros_like(S)
    Q3[..., :2, :2] = S[..., :2, :2] / s[..., None, None]
    Q3[..., 2, 2] = 1.0
    return Q3


def affine_size_scale(A: Tensor) -> Tensor:
    """Factor ``(...,)`` by which the affine image map ``A (..., 3, 3)`` scales a length without direction (OpNet's
    head size): the RMS of its axis scales, ``||A_2x2||_F / sqrt(2)``, as OpNet's code scales its ``coord`` size
    (``Affine2d.scales``). ``similarity_scale`` for a similarity; ``sqrt((kx^2 + ky^2) / 2)`` for the axis-aligned
    ``diag(kx, ky)`` of a window one pixel taller than wide (``crop_window_maps``, ``"pixel_edge"``)."""
    return A[..., :2, :2].square().sum((-2, -1)).div(2.0).sqrt()


def affine_rotation(A: Tensor) -> Tensor:
    """``Q3 = blockdiag(Q, 1) (..., 3, 3)`` with ``Q`` the orthogonal polar factor of ``A``'s 2x2 part (the rotation,
    or reflection when ``det < 0``, nearest to it), in closed form. Equals ``similarity_rotation`` for a similarity
    and is the identity for an axis-aligned scaling ``diag(kx, ky)`` (kx, ky > 0), where ``similarity_rotation``
    refuses ``A``: the OpNet code rotates its labels by the angle ``atan2(-A01, A11)``, 0 there too."""
    M = A[..., :2, :2]
    a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
    reflect = (a * d - b * c) < 0
    # rotation s [[cos, -sin], [sin, cos]]: (a + d, c - b) = 2 s (cos, sin); reflection s [[cos, sin], [sin, -cos]]:
    # (a - d, b + c) = 2 s (cos, sin)
    x, y = torch.where(reflect, a - d, a + d), torch.where(reflect, b + c, c - b)
    n = torch.sqrt(x * x + y * y)
    cs, sn = x / n, y / n
    Q3 = torch.zeros(A.shape[:-2] + (3, 3), dtype=A.dtype, device=A.device)
    Q3[..., 0, 0], Q3[..., 1, 0], Q3[..., 2, 2] = cs, sn, 1.0
    Q3[..., 0, 1] = torch.where(reflect, sn, -sn)
    Q3[..., 1, 1] = torch.where(reflect, -cs, cs)
    return Q3


def similarity_camera(S: Tensor, K: Tensor, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Camera change equivalent to warping the image by ``S (B, 3, 3)`` -> ``(Q3 (B, 3, 3), K' (B, 3, 3))``.

    ``Q3 = blockdiag(Q, 1)`` moves camera-frame points (``X' = Q3 X``, det -1 for a reflection) and
    ``K' = S K Q3^T``, so that ``project(Q3 X, K') = S project(X, K)`` for every point. For square pixels
    ``K'`` is again ``[[s f, 0, c'], [0, s f, c'], [0, 0, 1]]`` with ``c' = S c``; with ``fx != fy`` and a
    rotation it acquires skew (still exact under ``project_points``). ``scale``: as in ``similarity_rotation``.
    """
    Q3 = similarity_rotation(S, scale)
    return Q3, S @ K @ Q3.transpose(-1, -2)


def similarity_pose(Q3: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Pose ``(R', t')`` after the camera change ``Q3 (B, 3, 3)`` of ``similarity_camera``.

    ``t' = Q3 t``. A proper ``Q3``: ``R' = Q3 R``. A reflection (det -1): the head is mirrored too
    (head-frame ``v -> S v`` with ``S = diag(-1, 1, 1)``, left/right indices swapped), ``R' = Q3 R S``, a
    rotation; for the plain flip ``Q3 = S`` this is ``S R S`` (``mirror_rotation``). Then
    ``R' (S v) + t' = Q3 (R v + t)``.
    """
    S = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=R.dtype, device=R.device))
    improper = (det2(Q3[..., :2, :2]) < 0)[..., None, None]  # det Q3 = det Q for Q3 = blockdiag(Q, 1)
    QR = Q3 @ R
    return torch.where(improper, QR @ S, QR), (Q3 @ t.unsqueeze(-1)).squeeze(-1)


def apply_similarity_3d(S: Tensor, points: Tensor, scale: Tensor | None = None) -> Tensor:
    """Image-space 3D points ``(B, N, 3)`` (x, y px; z px, ``depth_relative_points``) under ``S (B, 3, 3)``:
    xy by ``S``, z scaled by ``s`` (exact: ``z_px = (Z - t_z) f / t_z`` with ``f -> s f``, ``Z`` unchanged).
    ``scale``: as in ``similarity_rotation``."""
    s = similarity_scale(S) if scale is None else scale
    xy = apply_transform_2d(S, points[..., :2])
    return torch.cat([xy, points[..., 2:3] * s[..., None, None]], -1)


def transform_boxes(A: Tensor, box: Tensor) -> Tensor:
    """Axis-aligned box ``(B, 4)`` of the 4 corners of ``box (B, 4)`` mapped by ``A (B, 3, 3)``."""
    x0, y0, x1, y1 = box.unbind(-1)
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], -2)
    return box_from_points(apply_transform_2d(A, corners))
