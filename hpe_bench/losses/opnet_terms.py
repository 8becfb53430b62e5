"""OpNet's loss terms (paper Sec. 2.2) as pure functions returning one value per sample ``(B,)``.

Masking by label availability and the batch reduction are left to the caller (see ``masking.py`` and
``opnet.py``). Every rotation conversion goes through ``hpe_bench.geometry``; quaternions are
``(x, y, z, w)``, real part last.

Reductions over components follow the authors' reference code where the paper is silent (the reference
values in ``shared/reference/opnet.md`` were produced that way):

- multivariate NLLs (rotation, coord) are full Gaussian NLLs *including* the ``3/2 log(2 pi)`` constant;
- diagonal Gaussian / Laplace NLLs and the landmark L1 are *means* over points (and, for the NLLs,
  over the coordinate dimensions), not sums, so their scale does not depend on the number of points.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, Normal

from hpe_bench.geometry import matrix_to_rotvec, quat_to_matrix

__all__ = [
    "quat_rotation_loss", "rotation_delta", "so3_nll", "coord_nll", "squared_error", "coord_squared_error",
    "laplace_points_nll", "weighted_l1_points", "gaussian_nll_diag", "quat_norm_loss",
    "landmark_weights", "EYELID_POINTS", "CHIN_CONTOUR_POINTS",
    "LANDMARK_WEIGHTS_PAPER", "LANDMARK_WEIGHTS_CODE",
]

# 0-based iBUG-68 indices. The eyelid points (all eye points except the 4 corners) get weight 0:
# their annotations are unreliable (closed/occluded eyes) and the corners already fix the eye position.
EYELID_POINTS = (37, 38, 40, 41, 43, 44, 46, 47)
# Chin contour without the chin tip (8): the code down-weights it (contour points slide along the jaw).
CHIN_CONTOUR_POINTS = tuple(range(0, 8)) + tuple(range(9, 17))


def landmark_weights(chin: float = 1.0, eyelid: float = 0.0) -> Tensor:
    """Per-landmark weights ``(68,)`` float32: ``eyelid`` at ``EYELID_POINTS``, ``chin`` at
    ``CHIN_CONTOUR_POINTS``, 1 elsewhere."""
    w = torch.ones(68)
    w[list(CHIN_CONTOUR_POINTS)] = chin
    w[list(EYELID_POINTS)] = eyelid
    return w


LANDMARK_WEIGHTS_PAPER = landmark_weights(chin=1.0)
"""``(68,)``: 0 at the eyelid points, 1 elsewhere (paper)."""
LANDMARK_WEIGHTS_CODE = landmark_weights(chin=0.8)
"""``(68,)``: as the paper, plus 0.8 on the chin contour 0-7 and 9-16 (reference code)."""


# ----------------------------------------------------------------------------------------- rotation

def quat_rotation_loss(q_hat: Tensor, q: Tensor) -> Tensor:
    """Paper Eq. (1): ``1 - (q_hat . q)^2`` ``(B,)`` for unit quaternions ``(B, 4)``.

    Equals ``(1 - cos delta) / 2`` for the angle ``delta`` between the rotations, and is invariant to
    the sign of either quaternion (q and -q are the same rotation). Inputs must be normalised; the
    separate ``quat_norm_loss`` acts on the raw output.
    """
    return 1.0 - (q_hat * q).sum(-1).square()


def rotation_delta(q_hat: Tensor, q: Tensor) -> Tensor:
    """Rotation vector ``(B, 3)`` of ``conj(q_hat) * q`` (Hamilton product), angle in ``[0, pi]``.

    With ``R(q1 * q2) = R(q1) R(q2)`` (the convention of ``geometry.quat_to_matrix``, verified in the
    tests) this is the rotation vector of ``R(q_hat)^T R(q)``: the delta is applied on the right,
    ``q = q_hat * exp(v)``, i.e. ``v`` is expressed in the predicted head frame (as in the reference
    code's ``rotation_delta(from_=q_hat, to_=q)``). The full angle is used (``|v| = delta``), not the
    half angle of the quaternion logarithm.
    """
    return matrix_to_rotvec(quat_to_matrix(q_hat).transpose(-1, -2) @ quat_to_matrix(q))


def so3_nll(q_hat: Tensor, q: Tensor, scale_tril: Tensor) -> Tensor:
    """Paper Eq. (2): ``-log N(v; 0, L L^T)`` ``(B,)`` with ``v = rotation_delta(q_hat, q)``.

    ``q_hat, q``: ``(B, 4)`` xyzw; ``scale_tril`` ``L``: ``(B, 3, 3)`` lower triangular with positive
    diagonal (the covariance factor itself, not its inverse). The normalisation constant
    ``log|L| + 3/2 log(2 pi)`` is included (the reference values need it).
    """
    v = rotation_delta(q_hat, q)
    return -MultivariateNormal(torch.zeros_like(v), scale_tril=scale_tril).log_prob(v)


# ------------------------------------------------------------------------------------------- coord

def coord_nll(c_hat: Tensor, c: Tensor, scale_tril: Tensor) -> Tensor:
    """Paper Eq. (4): ``-log N(c; c_hat, L L^T)`` ``(B,)`` for ``coord = (x, y, size)`` ``(B, 3)``;
    ``scale_tril``: ``(B, 3, 3)``. Includes the normalisation constant, as ``so3_nll``."""
    return -MultivariateNormal(c_hat, scale_tril=scale_tril).log_prob(c)


def squared_error(x_hat: Tensor, x: Tensor, reduction: str = "sum") -> Tensor:
    """L2 loss ``(B,)`` over the last dimension of ``(B, D)``: ``"sum"`` is the paper's
    ``|x - x_hat|^2`` (Eq. 3; coord, shape, box corners), ``"mean"`` the reference code's variant."""
    se = (x_hat - x).square()
    if reduction == "sum":
        return se.sum(-1)
    if reduction == "mean":
        return se.mean(-1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def coord_squared_error(c_hat: Tensor, c: Tensor, reduction: str = "sum") -> Tensor:
    """L2 loss ``(B,)`` of ``coord = (x, y, size)`` ``(B, 3)``: the position ``(x, y)`` reduced over its two
    components plus the size's squared error. ``"sum"``: ``dx^2 + dy^2 + ds^2`` (paper Eq. 3); ``"mean"``:
    ``(dx^2 + dy^2) / 2 + ds^2``, the reference code's two criteria ``xy`` and ``sz`` (at equal weights), not the
    mean over all three components."""
    return squared_error(c_hat[..., :2], c[..., :2], reduction) + (c_hat[..., 2] - c[..., 2]).square()


# --------------------------------------------------------------------------------------- landmarks

def _dim_mask(points: Tensor, use_z: Tensor | bool | None) -> Tensor:
    """``(B, 1, 3)`` mask of the coordinate dimensions that count: x, y always; z where ``use_z``."""
    B = points.shape[0]
    if use_z is None or use_z is True:
        use_z = torch.ones(B, dtype=torch.bool, device=points.device)
    elif use_z is False:
        use_z = torch.zeros(B, dtype=torch.bool, device=points.device)
    ones = torch.ones(B, 2, dtype=points.dtype, device=points.device)
    return torch.cat([ones, use_z.to(points.dtype).reshape(B, 1)], -1).unsqueeze(1)


def laplace_points_nll(pred_points: Tensor, points: Tensor, b: Tensor, weights: Tensor,
                       use_z: Tensor | bool | None = None) -> Tensor:
    """Paper Eq. (6): weighted Laplace NLL ``(B,)`` of 68 landmarks.

    ``pred_points, points``: ``(B, 68, 3)``; ``b``: Laplace scale, ``(68,)`` or ``(B, 68)`` (one per
    point, shared over xyz as in OpNet) or ``(B, 68, 3)``; ``weights``: ``(68,)``; ``use_z``: ``(B,)``
    bool (None = all True) -- where False only x and y count (2D-only labels).

    Per coordinate ``log(2 b) + |x - x_hat| / b``; averaged over the used dimensions, multiplied by the
    point weight, then averaged over all 68 points (divided by 68, not by the weight sum). This is
    the reference code's normalisation and reproduces the reference value 0.6699956 (b = 1.01,
    |delta| = 0.1, ``LANDMARK_WEIGHTS_CODE``: 0.8021074 * 56.8 / 68).
    """
    b = torch.as_tensor(b, dtype=pred_points.dtype, device=pred_points.device)
    if b.dim() < points.dim():  # one scale per point -> broadcast over the xyz dimension
        b = b.unsqueeze(-1)
    nll = torch.log(2.0 * b) + (pred_points - points).abs() / b  # (B, 68, 3)
    dims = _dim_mask(points, use_z)
    per_point = (nll * dims).sum(-1) / dims.sum(-1)  # (B, 68)
    return (per_point * weights.to(per_point)).mean(-1)


def weighted_l1_points(pred_points: Tensor, points: Tensor, weights: Tensor,
                       use_z: Tensor | bool | None = None) -> Tensor:
    """Paper Eq. (5): weighted L1 ``(B,)`` of 68 landmarks ``(B, 68, 3)``, weights ``(68,)``.

    Per point the absolute errors are *summed* over x, y (and z where ``use_z (B,)`` is True, None =
    all), weighted, then averaged over the 68 points (reference code's normalisation of the paper's sum).
    """
    l1 = ((pred_points - points).abs() * _dim_mask(points, use_z)).sum(-1)  # (B, 68)
    return (l1 * weights.to(l1)).mean(-1)


# ------------------------------------------------------------------------------ shape, box, quat norm

def gaussian_nll_diag(x_hat: Tensor, x: Tensor, std: Tensor) -> Tensor:
    """Independent Gaussian NLL ``(B,)`` of ``x`` ``(B, D)`` around ``x_hat`` ``(B, D)`` with standard
    deviations ``std`` broadcastable to ``(B, D)`` (input-independent ``(D,)`` in OpNet); shape
    parameters and box corners. Mean over the D components (reference code), constant included."""
    return -Normal(x_hat, std.to(x_hat)).log_prob(x).mean(-1)


def quat_norm_loss(q_raw: Tensor) -> Tensor:
    """``(1 - |q'|)^2`` ``(B,)`` on the unnormalised quaternion ``q'`` ``(B, 4)``: keeps the raw output
    near the unit sphere so normalisation stays well conditioned."""
    return (1.0 - q_raw.norm(dim=-1)).square()
