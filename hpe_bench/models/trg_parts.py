"""Pieces of TRG (hpe_bench/models/trg.py): translation rules, soft-argmax, point sampler, per-point reduction,
face regressor. Pure functions take and return tensors with the shapes in their docstrings.

Translation rules (``TRANSLATION_RULES``), each mapping the 3 regressed translation parameters ``p (..., 3)``,
the crop box (full-image px) and the full-image ``K`` to the camera-frame head centre ``t (..., 3)`` metres:

- ``"correction"`` (TRG, paper Eq. 2): ``p = c = (s, dx, dy)``, box scale and image-space offset in units of b.
- ``"camera_offset"`` (CLIFF-style baseline, supplementary Table 6): ``p = (s, ox, oy)``, the same depth
  ``Tz = 0.2 s f / b`` but x/y offsets from the box-centre ray in metres, camera space: ``Tx = Tz tau_x / f + ox``.
- ``"local_to_global"`` (img2pose-style baseline, Table 6): ``p = (x, y, z_n)`` is the head centre in the crop's
  local camera, the real camera rotated by ``Q = ray_rotation(K, box centre)`` to look through the box centre;
  x, y metres, depth normalised like img2pose's local pose, ``z = z_n f / (2 b)`` (img2pose divides by
  ``f / (w + h)``), so ``t = Q (x, y, z_n fx / (2 b))``. The rotation is local too: ``R = Q R_local``.
- ``"direct"`` (T_t-prediction baseline, Table 1): ``p = t``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry as G
from .mixed_precision import autocast_off, to_float32

FACE_SIZE = 0.2  # metres: the face is modelled inside a 0.2 m x 0.2 m box (paper Sec. 3.4)
TRANSLATION_RULES = ("correction", "camera_offset", "local_to_global", "direct")


def _box_terms(box: Tensor, K: Tensor, principal: str, image_size: Tensor | None):
    """Box side ``b (...,)``, box centre relative to the reference point ``tau (..., 2)``, ``fx, fy (...,)``."""
    b = box[..., 2] - box[..., 0]  # the box is square (CropInput); the paper's b is its side
    centre = (box[..., :2] + box[..., 2:]) / 2.0
    ref = G.reference_point(K, principal, image_size).to(box)
    return b, centre - ref, K[..., 0, 0], K[..., 1, 1]


def correction_to_translation(c: Tensor, box: Tensor, K: Tensor, face_size: float = FACE_SIZE,
                              principal: str = "principal_point", image_size: Tensor | None = None) -> Tensor:
    """Head translation ``t (..., 3)`` metres from the correction ``c (..., 3) = (s, dx, dy)``.

    Paper Eq. 2 with ``b`` the side of ``box (..., 4)`` (full-image px), ``tau`` the box centre relative to the
    principal point of ``K (..., 3, 3)`` (or to the image centre ``image_size / 2``, ``(W, H)``, with
    ``principal="image_centre"``)::

        Tz = face_size s fx / b,  Tx = Tz (tau_x + b dx) / fx,  Ty = Tz (tau_y + b dy) / fy

    For ``fx = fy = f`` this is exactly ``Tx = 0.2 s tau_x / b + 0.2 s dx``. Writing it through ``Tz`` keeps it
    exact for ``fx != fy``: projecting ``t`` with ``K`` (principal-point variant) gives
    ``u = box_cx + b dx``, ``v = box_cy + b dy``, i.e. (dx, dy) is the head centre's image offset from the box
    centre in units of b (the paper's ``tau_face = b tau~_face``).

    The result is the same for the full image (box, K) and for the crop (box (0, 0, S, S), ``A @ K``):
    ``fx' / S = fx / b`` and ``tau' / fx' = tau / fx`` because A only scales and shifts pixels.
    """
    b, tau, fx, fy = _box_terms(box, K, principal, image_size)
    s, dx, dy = c.unbind(-1)
    tz = face_size * s * fx / b
    return torch.stack([tz * (tau[..., 0] + b * dx) / fx, tz * (tau[..., 1] + b * dy) / fy, tz], -1)


def translation_to_correction(t: Tensor, box: Tensor, K: Tensor, face_size: float = FACE_SIZE,
                              principal: str = "principal_point", image_size: Tensor | None = None) -> Tensor:
    """Exact inverse of ``correction_to_translation``: ``t (..., 3)`` metres -> ``c (..., 3) = (s, dx, dy)``.

    ``s = Tz b / (face_size fx)``, ``dx = (fx Tx / Tz - tau_x) / b``, ``dy = (fy Ty / Tz - tau_y) / b``.
    Used to build ground-truth corrections from ground-truth poses.
    """
    b, tau, fx, fy = _box_terms(box, K, principal, image_size)
    tx, ty, tz = t.unbind(-1)
    s = tz * b / (face_size * fx)
    dx = (fx * tx / tz - tau[..., 0]) / b
    dy = (fy * ty / tz - tau[..., 1]) / b
    return torch.stack([s, dx, dy], -1)


def local_frame(box: Tensor, K: Tensor) -> Tensor:
    """Rotation ``Q (..., 3, 3)`` of the crop's local camera (optical axis through the box centre), camera frame."""
    return G.ray_rotation(K, (box[..., :2] + box[..., 2:]) / 2.0)


def params_to_translation(rule: str, p: Tensor, box: Tensor, K: Tensor, face_size: float = FACE_SIZE,
                          principal: str = "principal_point", image_size: Tensor | None = None) -> Tensor:
    """Head translation ``t (..., 3)`` metres from the regressed parameters ``p (..., 3)`` under ``rule``
    (module docstring). ``box (..., 4)`` full-image px, ``K (..., 3, 3)`` full-image intrinsics."""
    if rule == "correction":
        return correction_to_translation(p, box, K, face_size, principal, image_size)
    if rule == "direct":
        return p
    b, tau, fx, fy = _box_terms(box, K, principal, image_size)
    if rule == "camera_offset":
        s, ox, oy = p.unbind(-1)
        tz = face_size * s * fx / b
        return torch.stack([tz * tau[..., 0] / fx + ox, tz * tau[..., 1] / fy + oy, tz], -1)
    if rule == "local_to_global":
        x, y, zn = p.unbind(-1)
        local = torch.stack([x, y, zn * fx / (2.0 * b)], -1)
        return (local_frame(box, K) @ local.unsqueeze(-1)).squeeze(-1)
    raise ValueError(f"translation rule must be one of {TRANSLATION_RULES}, got {rule!r}")


def translation_to_params(rule: str, t: Tensor, box: Tensor, K: Tensor, face_size: float = FACE_SIZE,
                          principal: str = "principal_point", image_size: Tensor | None = None) -> Tensor:
    """Exact inverse of ``params_to_translation``: ``t (..., 3)`` -> ``p (..., 3)`` (ground-truth parameters)."""
    if rule == "correction":
        return translation_to_correction(t, box, K, face_size, principal, image_size)
    if rule == "direct":
        return t
    b, tau, fx, fy = _box_terms(box, K, principal, image_size)
    if rule == "camera_offset":
        s = t[..., 2] * b / (face_size * fx)
        return torch.stack([s, t[..., 0] - t[..., 2] * tau[..., 0] / fx, t[..., 1] - t[..., 2] * tau[..., 1] / fy], -1)
    if rule == "local_to_global":
        local = (local_frame(box, K).transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)
        return torch.stack([local[..., 0], local[..., 1], local[..., 2] * 2.0 * b / fx], -1)
    raise ValueError(f"translation rule must be one of {TRANSLATION_RULES}, got {rule!r}")


def soft_argmax(heatmaps: Tensor, cells: Tensor | None = None) -> Tensor:
    """Heatmaps ``(B, L, H, W)`` -> expected positions ``(B, L, 2)`` (x, y) in ``[-1, 1]``.

    Softmax over all H*W positions; cell centres sit on ``linspace(-1, 1)``, the align_corners=True grid, or on
    ``cells (W,)`` (square maps; ``geometry.heatmap_cell_positions``) when given.
    """
    B, L, H, W = heatmaps.shape
    prob = heatmaps.flatten(2).softmax(-1).view(B, L, H, W)
    if cells is not None:
        xs = ys = cells.to(heatmaps)
    else:
        xs = torch.linspace(-1.0, 1.0, W, dtype=heatmaps.dtype, device=heatmaps.device)
        ys = torch.linspace(-1.0, 1.0, H, dtype=heatmaps.dtype, device=heatmaps.device)
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)


def sample_features(feature_map: Tensor, points: Tensor) -> Tensor:
    """Bilinear point features ``(B, N, C)`` of ``feature_map (B, C, H, W)`` at ``points (B, N, 2)`` in ``[-1, 1]``.

    Zero padding outside the crop; differentiable in ``points`` (the sampler passes gradients to the pose
    and face that placed the points).
    """
    out = F.grid_sample(feature_map, points.unsqueeze(2), mode="bilinear", padding_mode="zeros",
                        align_corners=True)  # (B, C, N, 1)
    return out.squeeze(-1).transpose(1, 2)


class PointReduction(nn.Module):
    """Per-point MLP 256 -> 128 -> 64 -> 5 (LeakyReLU; raw feature re-fed to layers 2 and 3; last ReLU).

    ``forward(f (B, N, C)) -> (B, 5 N)``.
    """

    def __init__(self, channels: int = 256, dims: tuple[int, int, int] = (128, 64, 5)):
        super().__init__()
        self.fc1 = nn.Linear(channels, dims[0])
        self.fc2 = nn.Linear(dims[0] + channels, dims[1])
        self.fc3 = nn.Linear(dims[1] + channels, dims[2])
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, f: Tensor) -> Tensor:
        h = self.act(self.fc1(f))
        h = self.act(self.fc2(torch.cat([h, f], -1)))
        h = F.relu(self.fc3(torch.cat([h, f], -1)))
        return h.flatten(1)


class ScaledLinear(nn.Linear):
    """``nn.Linear`` between fixed per-feature scales: ``forward(x) = (W (x in_scale) + b) out_scale``.

    The scales are non-persistent buffers (ones by default; the state dict holds ``weight`` and ``bias`` only).
    TRG uses them to keep its weights in the authors' parametrisation while the state it regresses stays in the
    paper's units: Adam's step is per entry and ignores a rescaling of the inputs or outputs, so only weights that
    are the authors' entries train at the authors' rates (``models/trg.py``, docs/reproducing.md).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("in_scale", torch.ones(in_features), persistent=False)
        self.register_buffer("out_scale", torch.ones(out_features), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x * self.in_scale, self.weight, self.bias) * self.out_scale


class FaceRegressor(nn.Module):
    """Linear -> 1024 -> Dropout -> Linear 1024 -> Dropout (no activation, as in the reference), two heads.

    ``forward(x (B, n_in)) -> (dV (B, n_vertices, 3) or None when n_vertices = 0, dpose (B, 9) = (d6D, dp))``.
    The first layer and the pose head are ``ScaledLinear`` (scales set by ``TRG``).
    """

    def __init__(self, n_in: int, n_vertices: int = 1220, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.n_vertices = n_vertices
        self.trunk = nn.Sequential(ScaledLinear(n_in, hidden), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.Dropout(dropout))
        self.vertex_head = nn.Linear(hidden, n_vertices * 3) if n_vertices else None
        self.pose_head = ScaledLinear(hidden, 9)
        # Small head weights: the first iterations start near the initial face/pose instead of far from it. The
        # biases keep PyTorch's default U(+-1/sqrt(hidden)), as in the authors' code (docs/reproducing.md).
        for head in (self.vertex_head, self.pose_head):
            if head is not None:
                nn.init.xavier_uniform_(head.weight, gain=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        h = self.trunk(x)
        with autocast_off(h):  # the heads' last layers in float32 under mixed precision: dV, dpose unrounded
            h = to_float32(h)  # float64 runs stay float64
            dV = None if self.vertex_head is None else self.vertex_head(h).view(-1, self.n_vertices, 3)
            return dV, self.pose_head(h)


def deconv_block(c_in: int, c_out: int) -> nn.Sequential:
    """ConvTranspose2d(k4, s2, p1, no bias) -> BN -> ReLU: doubles the spatial size."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
