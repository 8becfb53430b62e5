"""TRG: head Translation, Rotation and face Geometry network (Chun & Chang, ECCV 2024).

ResNet18 -> three deconv stages (12, 24, 48 maps) -> per iteration: sample point features (an 18x18 grid
first, then the previous face's 305-vertex subset projected into the crop), reduce them to 5-d per point,
and regress residuals of the dense face (1220x3, head frame), the 6D rotation and the box correction
c = (s, dx, dy). Translation is never regressed directly: it follows from c, the box and the intrinsics
(paper Eq. 2, supplementary Sec. 7), see ``correction_to_translation``.

Coordinates: the sampler and the heatmap landmarks use crop pixels ``x in [0, S - 1]`` mapped linearly
onto ``[-1, 1]`` (``geometry.crop_to_normalized``), which is exactly how ``grid_sample(align_corners=True)`` reads a
feature map covering the crop (its first/last cell centres at -1/+1). All other geometry comes from
``hpe_bench.geometry``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry as G
from ..assets import arkit_face
from . import register_model
from .backbones import create_backbone

FACE_SIZE = 0.2  # metres: the face is modelled inside a 0.2 m x 0.2 m box (paper Sec. 3.4)


# ----------------------------------------------------------------------------------------------------
# Translation <-> correction (pure functions)
# ----------------------------------------------------------------------------------------------------
def _box_terms(box: Tensor, K: Tensor, principal: str, image_size: Tensor | None):
    """Box side ``b (...,)``, box centre relative to the reference point ``tau (..., 2)``, ``fx, fy (...,)``."""
    b = box[..., 2] - box[..., 0]  # the box is square (CropInput); the paper's b is its side
    centre = (box[..., :2] + box[..., 2:]) / 2.0
    if principal == "principal_point":
        ref = K[..., :2, 2]
    elif principal == "image_centre":
        # Reference-code variant: tau relative to (W/2, H/2); exact only where c is the image centre.
        if image_size is None:
            raise ValueError("principal='image_centre' needs image_size (..., 2) = (W, H)")
        ref = torch.as_tensor(image_size).to(box) / 2.0
    else:
        raise ValueError(f"principal must be 'principal_point' or 'image_centre', got {principal!r}")
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


def soft_argmax(heatmaps: Tensor) -> Tensor:
    """Heatmaps ``(B, L, H, W)`` -> expected positions ``(B, L, 2)`` (x, y) in ``[-1, 1]``.

    Softmax over all H*W positions; cell centres sit on ``linspace(-1, 1)``, the align_corners=True grid.
    """
    B, L, H, W = heatmaps.shape
    prob = heatmaps.flatten(2).softmax(-1).view(B, L, H, W)
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


# ----------------------------------------------------------------------------------------------------
# Network pieces
# ----------------------------------------------------------------------------------------------------
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


class FaceRegressor(nn.Module):
    """Linear -> 1024 -> Dropout -> Linear 1024 -> Dropout (no activation, as in the reference), two heads.

    ``forward(x (B, n_in)) -> (dV (B, n_vertices, 3), dpose (B, 9) = (d6D, ds, ddx, ddy))``.
    """

    def __init__(self, n_in: int, n_vertices: int = 1220, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.n_vertices = n_vertices
        self.trunk = nn.Sequential(nn.Linear(n_in, hidden), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.Dropout(dropout))
        self.vertex_head = nn.Linear(hidden, n_vertices * 3)
        self.pose_head = nn.Linear(hidden, 9)
        # Small heads: the first iterations start near the initial face/pose instead of far from it.
        for head in (self.vertex_head, self.pose_head):
            nn.init.xavier_uniform_(head.weight, gain=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.vertex_head(h).view(-1, self.n_vertices, 3), self.pose_head(h)


def _deconv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


@register_model("trg")
class TRG(nn.Module):
    """TRG from ``CropInput`` outputs (192x192 RGB crop, ``box``, ``K``, ``K_crop``, ``A``, ``bbox_info``).

    Args:
        iterations: regression iterations (3 in the paper). Iteration i uses map ``min(i, 2)`` of the
            12/24/48 maps when ``multiscale``, else always the 48x48 map (the "w/o MS" ablation).
        pretrained: ImageNet ResNet18 weights when available (offline-safe fallback to random init).
        multiscale: see ``iterations``.
        grid_size: side of the first iteration's sampling grid (18 -> 324 points).
        face_size, principal: translation rule, see ``correction_to_translation``. ``principal="image_centre"``
            needs ``inputs["image_size"] (B, 2) = (W, H)`` of the full images.
        dropout: regressor dropout.
    """

    def __init__(self, iterations: int = 3, pretrained: bool = False, multiscale: bool = True,
                 grid_size: int = 18, backbone: str = "resnet18", face_size: float = FACE_SIZE,
                 principal: str = "principal_point", n_landmarks: int = 68, channels: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.iterations, self.multiscale = int(iterations), bool(multiscale)
        self.face_size, self.principal = float(face_size), principal
        # layer4 without pooling: 192x192 -> 512x6x6.
        self.backbone = create_backbone(backbone, pretrained=pretrained, features_only=True, out_indices=(4,))
        c4 = self.backbone.feature_info.channels()[-1]
        self.deconvs = nn.ModuleList([_deconv(c4, channels), _deconv(channels, channels), _deconv(channels, channels)])
        self.heatmap = nn.Conv2d(channels, n_landmarks, 1)

        face = arkit_face()
        mean = torch.as_tensor(face["mean_vertices"], dtype=torch.float32)
        self.register_buffer("init_vertices", mean, persistent=False)
        self.register_buffer("init_sixd", G.matrix_to_sixd(torch.as_tensor(face["init_rotation"], dtype=torch.float32)),
                             persistent=False)
        self.register_buffer("init_correction", torch.tensor([1.0, 0.0, 0.0]), persistent=False)
        self.register_buffer("subsample", torch.as_tensor(face["subsample_305"], dtype=torch.long), persistent=False)
        lin = torch.linspace(-1.0, 1.0, grid_size)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy], -1).view(-1, 2), persistent=False)

        n_sub = len(face["subsample_305"])
        state = 3 * n_sub + 6 + 3 + 3  # previous 305 vertices, 6D rotation, correction, I_bbox
        self.reducers = nn.ModuleList([PointReduction(channels) for _ in range(self.iterations)])
        self.regressors = nn.ModuleList([
            FaceRegressor(5 * (grid_size ** 2 if i == 0 else n_sub) + state, mean.shape[0], dropout=dropout)
            for i in range(self.iterations)])

    def sampling_points(self, vertices: Tensor, R: Tensor, t: Tensor, K_crop: Tensor, size: int) -> Tensor:
        """The 305-vertex subset of ``vertices (B, 1220, 3)`` posed by ``R, t`` and projected with ``K_crop``,
        normalised to ``[-1, 1]`` for a crop of side ``size`` -> ``(B, 305, 2)``; keeps the gradient."""
        cam = G.transform_points(vertices[:, self.subsample], R, t)
        return G.crop_to_normalized(G.project_points(cam, K_crop), size)

    def forward(self, inputs: dict[str, Tensor]) -> dict:
        """Returns, for the last iteration, ``R (B, 3, 3)``, ``t (B, 3)`` m, ``vertices (B, 1220, 3)`` head frame m,
        ``landmarks_2d (B, 68, 2)`` full-image px; per iteration the lists ``R_iters``, ``t_iters``,
        ``vertices_iters``, ``correction_iters (B, 3)``, ``sampling_points_iters (B, N, 2)`` (the points each
        iteration sampled, normalised); ``heatmap_landmarks (B, 68, 2)`` normalised crop coordinates; and, for
        the loss, ``A (B, 3, 3)`` (full image -> crop px, from the inputs) and ``crop_size`` (int S)."""
        image, box, K, K_crop = inputs["image"], inputs["box"], inputs["K"], inputs["K_crop"]
        B, S = image.shape[0], image.shape[-1]
        feats = [self.backbone(image)[-1]]
        for deconv in self.deconvs:
            feats.append(deconv(feats[-1]))
        maps = feats[1:]  # 12, 24, 48
        heatmap_landmarks = soft_argmax(self.heatmap(maps[-1]))

        dtype = image.dtype
        V = self.init_vertices.to(dtype).expand(B, -1, -1)
        sixd = self.init_sixd.to(dtype).expand(B, -1)
        c = self.init_correction.to(dtype).expand(B, -1)
        R = G.sixd_to_matrix(sixd)
        t = self._translation(c, box, K, inputs)
        info = inputs["bbox_info"].to(dtype)
        out = {k: [] for k in ("R_iters", "t_iters", "vertices_iters", "correction_iters", "sampling_points_iters")}
        for i in range(self.iterations):
            points = self.grid.to(dtype).expand(B, -1, -1) if i == 0 else self.sampling_points(V, R, t, K_crop, S)
            fmap = maps[min(i, len(maps) - 1)] if self.multiscale else maps[-1]
            point_feats = self.reducers[i](sample_features(fmap, points))
            x = torch.cat([point_feats, V[:, self.subsample].flatten(1), sixd, c, info], -1)
            dV, dpose = self.regressors[i](x)
            V, sixd, c = V + dV, sixd + dpose[:, :6], c + dpose[:, 6:]
            # Translation from the FULL image box and K: identical to using the crop (see
            # correction_to_translation) for the principal-point rule, and the only right choice for the
            # image-centre rule, whose reference point is the full image's centre.
            R, t = G.sixd_to_matrix(sixd), self._translation(c, box, K, inputs)
            for k, v in zip(out, (R, t, V, c, points)):
                out[k].append(v)

        crop_px = G.normalized_to_crop(heatmap_landmarks, S)
        landmarks_2d = G.apply_transform_2d(torch.linalg.inv(inputs["A"].to(dtype)), crop_px)
        out.update(R=R, t=t, vertices=V, landmarks_2d=landmarks_2d, heatmap_landmarks=heatmap_landmarks)
        # For the loss: the crop map A (full image -> crop px) and the crop side S, so the 2D landmark labels
        # can be brought into the heatmap's normalised crop coordinates.
        out.update(A=inputs["A"], crop_size=S)
        return out

    def _translation(self, c: Tensor, box: Tensor, K: Tensor, inputs: dict) -> Tensor:
        return correction_to_translation(c, box.to(c), K.to(c), self.face_size, self.principal,
                                         inputs.get("image_size"))
