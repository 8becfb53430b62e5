"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012) for head-pose streams: vectors and rotations.

The filter is an exponential smoother whose cut-off frequency rises with the signal's speed: slow motion is
smoothed hard (no jitter), fast motion passes with little lag. For a sample ``x_k`` at time step ``dt``:

    alpha(fc) = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)
    speed_k   = lowpass((x_k - xhat_{k-1}) / dt, alpha(d_cutoff))
    xhat_k    = lowpass(x_k, alpha(min_cutoff + beta |speed_k|))

Rotations are smoothed **on SO(3)**, not on Euler angles or raw quaternion components (which wrap, or have
the q / -q sign ambiguity): the step from the previous estimate is the rotation vector
``d = log(Rhat_{k-1}^T R_k)`` (``geometry.matrix_to_rotvec``), the speed is ``|d| / dt`` (rad/s), and the
new estimate moves ``alpha`` of the way along the geodesic: ``Rhat_k = Rhat_{k-1} exp(alpha d)``. The result
is always a rotation, and the filter is the same in any head or camera frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import geometry as G

__all__ = ["OneEuroParams", "smoothing_factor", "OneEuroFilter", "OneEuroRotationFilter", "OneEuroPoseFilter",
           "smooth_rotations"]


@dataclass(frozen=True)
class OneEuroParams:
    """``min_cutoff`` (Hz): smoothing at rest (lower = smoother); ``beta`` (s per unit): how fast the cut-off
    rises with speed (higher = less lag); ``d_cutoff`` (Hz): cut-off of the speed estimate.

    Defaults for rotations in radians at video rates: ``min_cutoff=1.0``, ``beta=0.3``, ``d_cutoff=1.0``."""
    min_cutoff: float = 1.0
    beta: float = 0.3
    d_cutoff: float = 1.0


def smoothing_factor(cutoff_hz: Tensor | float, dt: float) -> Tensor:
    """``alpha = 1 / (1 + tau / dt)`` with ``tau = 1 / (2 pi cutoff)``; ``(...,)`` like ``cutoff_hz``."""
    if dt <= 0:
        raise ValueError(f"time step must be positive, got {dt}")
    tau = 1.0 / (2.0 * math.pi * torch.as_tensor(cutoff_hz, dtype=torch.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter of a vector stream ``(D,)`` (e.g. a translation in metres). ``params.beta`` is in
    seconds per signal unit. ``__call__(x, dt)`` returns the filtered value (float64)."""

    def __init__(self, params: OneEuroParams = OneEuroParams()):
        self.params = params
        self.x: Tensor | None = None
        self.dx: Tensor | None = None

    def __call__(self, x: Tensor, dt: float) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if self.x is None:
            self.x, self.dx = x.clone(), torch.zeros_like(x)
            return self.x.clone()
        p = self.params
        speed = (x - self.x) / dt
        self.dx = self.dx + smoothing_factor(p.d_cutoff, dt) * (speed - self.dx)
        alpha = smoothing_factor(p.min_cutoff + p.beta * self.dx.norm(), dt)
        self.x = self.x + alpha * (x - self.x)
        return self.x.clone()


class OneEuroRotationFilter:
    """One Euro filter of a rotation stream ``(3, 3)`` on SO(3) (module docstring); speed in rad/s."""

    def __init__(self, params: OneEuroParams = OneEuroParams()):
        self.params = params
        self.R: Tensor | None = None
        self.omega: Tensor | None = None

    def __call__(self, R: Tensor, dt: float) -> Tensor:
        R = torch.as_tensor(R, dtype=torch.float64)
        if self.R is None:
            self.R, self.omega = R.clone(), torch.zeros(3, dtype=torch.float64)
            return self.R.clone()
        p = self.params
        step = G.matrix_to_rotvec(self.R.transpose(-1, -2) @ R)  # body-frame step toward the measurement
        self.omega = self.omega + smoothing_factor(p.d_cutoff, dt) * (step / dt - self.omega)
        alpha = smoothing_factor(p.min_cutoff + p.beta * self.omega.norm(), dt)
        self.R = self.R @ G.rotvec_to_matrix(alpha * step)
        return self.R.clone()


class OneEuroPoseFilter:
    """A rotation filter and a translation filter side by side (one per tracked face).

    ``rotation`` and ``translation`` take their own ``OneEuroParams`` (translation ``beta`` in s/m)."""

    def __init__(self, rotation: OneEuroParams = OneEuroParams(),
                 translation: OneEuroParams = OneEuroParams(min_cutoff=1.0, beta=1.0)):
        self.rot = OneEuroRotationFilter(rotation)
        self.trans = OneEuroFilter(translation)

    def __call__(self, R: Tensor, t: Tensor | None, dt: float) -> tuple[Tensor, Tensor | None]:
        R_s = self.rot(R, dt)
        t_s = None
        if t is not None and bool(torch.isfinite(torch.as_tensor(t)).all()):
            t_s = self.trans(t, dt)
        return R_s, t_s


def smooth_rotations(R: Tensor, dt: float, params: OneEuroParams = OneEuroParams()) -> Tensor:
    """Filter a whole sequence ``R (T, 3, 3)`` sampled every ``dt`` seconds -> ``(T, 3, 3)`` float64."""
    f = OneEuroRotationFilter(params)
    return torch.stack([f(r, dt) for r in torch.as_tensor(R, dtype=torch.float64)])
