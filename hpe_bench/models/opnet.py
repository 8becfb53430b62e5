"""OpNet (Welling 2024): one grayscale 129x129 crop -> pose, position/size, box, 68 landmarks, uncertainties.

Architecture (see ``shared/reference/opnet.md``, "Model"): a backbone (the paper's residual MobileNetV1
variant, or ResNet18 from timm) -> global average pool -> ONE shared ``Dropout(0.5)`` -> one linear layer per
head, each followed by a fixed map to its quantity.

Frames and units of the raw outputs (*crop* quantities):

- image space of the crop normalised to ``[-1, 1]`` on both axes, x right, y down, z into the image;
- ``R_crop = quat_to_matrix(quat)`` rotates OpNet's head frame (the BFM68 asset frame) into that orthographic
  crop frame; quaternions are ``(x, y, z, w)``, real part last (``hpe_bench.geometry`` convention);
- ``coord = (x, y, size)``: head position and size in the same normalised units.

When the inputs carry the crop (``A``, ``K``, ``has_K`` from ``CropInput``), ``forward`` also returns the
full-image / camera-frame predictions the metrics read (``R``, ``t``, ``landmarks_2d``), decoded by OpNet's
targets codec (``codecs.opnet.decode``: perspective correction and the head-size prior). The loss encodes
its crop-space targets from the schema labels with the same codec (``codecs.opnet.encode``); the network
returns predictions only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry as G
from ..assets import bfm68
from ..codecs import opnet as codec
from ..deploy.spec import ExportSpec
from . import register_model
from .backbones import create_backbone
from .mixed_precision import autocast_off, to_float32

N_POINTS = 68
N_SHAPE = 50  # 40 identity + 10 expression coefficients of BFM68

# (cin, cout, stride) of the 13 depthwise-separable blocks (opnet.md); feature maps 65, 33, 17, 9, 5.
_MOBILENET_BLOCKS = (
    [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
    + [(512, 512, 1)] * 5
    + [(512, 1024, 2), (1024, 1024, 1)]
)


def smoothclip(x: Tensor) -> Tensor:
    """The paper's positive map ``ELU(x) + 1``: R -> R+, identity + 1 for x >= 0, ``exp(x)`` below 0."""
    return F.elu(x) + 1.0


def pose_landmarks(quat: Tensor, coord: Tensor, shape_params: Tensor,
                   mean: Tensor | None = None, basis: Tensor | None = None) -> Tensor:
    """Pose the BFM68 deformable model: ``R(quat) @ (mean + basis @ shape) * size + (x, y, 0)``.

    Orthographic: the depth is scaled by ``size`` but not offset. Units follow ``coord`` (normalised crop
    space in the network; pixels work too, e.g. with dataset labels ``coords = (x, y, radius px)``).

    Args:
        quat: ``(..., 4)`` quaternion ``(x, y, z, w)`` (normalised inside ``quat_to_matrix``).
        coord: ``(..., 3)`` ``(x, y, size)``.
        shape_params: ``(..., 50)`` shape coefficients.
        mean, basis: ``(68, 3)`` and ``(68, 3, 50)``; default the packaged ``bfm68()`` asset.
    Returns:
        ``(..., 68, 3)`` posed points.
    """
    if mean is None or basis is None:
        asset = bfm68()
        mean = torch.as_tensor(asset["mean"]) if mean is None else mean
        basis = torch.as_tensor(asset["basis"]) if basis is None else basis
    mean = mean.to(shape_params)
    basis = basis.to(shape_params)
    local = mean + torch.einsum("kdn,...n->...kd", basis, shape_params)
    R = G.quat_to_matrix(quat)
    posed = torch.einsum("...ij,...kj->...ki", R, local) * coord[..., None, 2:3]
    offset = F.pad(coord[..., :2], (0, 1))  # (x, y, 0): z is not offset
    return posed + offset[..., None, :]


def lower_triangular_from_features(z: Tensor, eps: float = 0.01) -> Tensor:
    """``(..., 6)`` -> ``(..., 3, 3)`` Cholesky-like factor: diag z0..z2, L10=z3, L20=z4, L21=z5.

    Columns are sign-flipped so the diagonal is positive (the same ``Sigma = L L^T``), then ``eps * I`` is
    added so ``Sigma`` stays positive definite even when a diagonal entry is ~0.
    """
    zero = torch.zeros_like(z[..., 0])
    L = torch.stack([
        z[..., 0], zero, zero,
        z[..., 3], z[..., 1], zero,
        z[..., 4], z[..., 5], z[..., 2],
    ], dim=-1).reshape(z.shape[:-1] + (3, 3))
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    sign = torch.where(diag < 0, -torch.ones_like(diag), torch.ones_like(diag))  # not sign(): 0 -> +1
    L = L * sign[..., None, :]
    return L + eps * torch.eye(3, dtype=z.dtype, device=z.device)


class ScaleTrilHead(nn.Module):
    """Input-dependent 3x3 uncertainty factor: ``Linear(F, 6, no bias) -> BatchNorm1d(6) -> L``.

    BN weight starts at 1e-4 and bias at (1, 1, 1, 0, 0, 0), so L starts near ``1.01 I`` for every input and
    the NLL starts from a well-conditioned, input-independent covariance.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.linear = nn.Linear(num_features, 6, bias=False)
        self.bn = nn.BatchNorm1d(6)
        with torch.no_grad():
            self.bn.weight.fill_(1e-4)
            self.bn.bias.copy_(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, F) -> (B, 3, 3)`` lower-triangular, positive diagonal."""
        return lower_triangular_from_features(self.bn(self.linear(x)))


class ConstantScale(nn.Module):
    """Input-independent positive scale ``h^2 + 0.01`` (``h`` starts at 1), used as a std or Laplace b."""

    def __init__(self, n: int):
        super().__init__()
        self.h = nn.Parameter(torch.ones(n))

    def forward(self) -> Tensor:
        return self.h.square() + 0.01


class _DepthwiseSeparableBlock(nn.Module):
    """``dw3x3 -> BN -> ReLU -> 1x1 -> BN -> (+x when stride 1 and cin == cout) -> ReLU``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.pw(F.relu(self.bn1(self.dw(x)))))
        return F.relu(y + x if self.residual else y)


def he_fan_out_(conv: nn.Conv2d) -> None:
    """The authors' convolution init: He-normal with fan-out, ``std = sqrt(2 / (out_channels k_h k_w))``
    (PyTorch's default would give the 3x3 depthwise convs std 0.19, 2-13x the authors' 0.015-0.083, and the 1x1
    convs 1.7-2.5x less than theirs)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class OpNetMobileNetV1(nn.Module):
    """The paper's residual MobileNetV1 (not in timm). ``(B, in_chans, H, W) -> (B, 1024)`` pooled features.
    Every convolution starts He-normal fan-out (``he_fan_out_``), as in the authors' code."""

    def __init__(self, in_chans: int = 1):
        super().__init__()
        # Convs feed BN, so they carry no bias (BN's shift makes it redundant).
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 32, 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[_DepthwiseSeparableBlock(*b) for b in _MOBILENET_BLOCKS])
        self.num_features = _MOBILENET_BLOCKS[-1][1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_fan_out_(m)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)).mean(dim=(-2, -1))


def _make_backbone(name: str) -> nn.Module:
    if name == "mobilenetv1":
        return OpNetMobileNetV1(in_chans=1)
    if name == "resnet18":
        # timm's resnet18 is the torchvision layout (BasicBlock [2,2,2,2]); in_chans=1 gives conv1 1->64 7x7 s2.
        # timm already starts every conv He-normal fan-out; conv1 is re-drawn explicitly because the authors
        # replace it and initialise it so (not left to a library default).
        net = create_backbone("resnet18", pretrained=False, in_chans=1)
        he_fan_out_(net.conv1)
        return net
    raise ValueError(f"unknown OpNet backbone {name!r}; expected 'mobilenetv1' or 'resnet18'")


@register_model("opnet")
class OpNet(nn.Module):
    """OpNet head-pose network on one grayscale crop.

    Args:
        backbone: ``"mobilenetv1"`` (paper baseline, 3.28 M parameters) or ``"resnet18"`` (11.2 M).
        landmarks: with ``False`` (the "- Landmarks" ablation) there is no shape head, no landmark output and
            no points/shape scales.
        dropout: probability of the one dropout shared by all heads.

    ``forward({"image": (B, 1, 129, 129)})`` (normalised by the caller to about [-0.5, 0.5]) returns the raw
    OpNet outputs, all in the crop's normalised orthographic image frame (see module docstring):

    - ``quat (B, 4)`` unit, (x, y, z, w) with w > 0; ``quat_raw (B, 4)`` before normalisation (for the norm
      penalty); ``R_crop (B, 3, 3) = geometry.quat_to_matrix(quat)``;
    - ``coord (B, 3)`` (x, y, size), size > 0; ``roi (B, 4)`` (x0, y0, x1, y1);
    - ``shape_params (B, 50)``; ``landmarks_crop (B, 68, 3)`` = ``pose_landmarks(quat, coord, shape_params)``;
    - ``rot_scale_tril (B, 3, 3)`` (covariance of the so(3) error vector), ``coord_scale_tril (B, 3, 3)``;
    - ``roi_scale (4,)``, ``points_scale (68,)``, ``shape_scale (50,)``: input-independent.

    With ``A (B, 3, 3)``, ``K (B, 3, 3)``, ``has_K (B,)`` in the inputs it adds ``R (B, 3, 3)`` camera frame,
    ``t (B, 3)`` metres, ``coord_px (B, 3)``, ``landmarks_2d (B, 68, 2)`` full-image pixels
    (``codecs.opnet.decode``). Always: ``per_sample = {"sigma_rot_frobenius": (B,)}`` (Frobenius norm of the
    rotation covariance ``L L^T``, rad^2; a column of predictions.parquet).
    The uncertainty heads use BatchNorm1d, so training needs batches of more than one sample.
    """

    def __init__(self, backbone: str = "mobilenetv1", landmarks: bool = True, dropout: float = 0.5):
        super().__init__()
        self.backbone_name = backbone
        self.landmarks = landmarks
        self.backbone = _make_backbone(backbone)
        nf = self.backbone.num_features
        self.dropout = nn.Dropout(dropout)

        self.quat_head = nn.Linear(nf, 4)
        self.xy_head = nn.Linear(nf, 2)
        self.size_head = nn.Linear(nf, 1)
        self.box_head = nn.Linear(nf, 4)
        self.rot_unc = ScaleTrilHead(nf)
        self.coord_unc = ScaleTrilHead(nf)
        self.roi_scale = ConstantScale(4)
        with torch.no_grad():
            self.quat_head.bias[3] = math.log(0.1)  # smoothclip(log 0.1) = 0.1
            self.size_head.bias.fill_(0.5)
            self.box_head.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.5]))

        if landmarks:
            self.shape_head = nn.Linear(nf, N_SHAPE)
            self.points_scale = ConstantScale(N_POINTS)
            self.shape_scale = ConstantScale(N_SHAPE)
            asset = bfm68()
            # Constants, not checkpoint state: always re-read from the packaged asset.
            self.register_buffer("bfm_mean", torch.as_tensor(asset["mean"], dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("bfm_basis", torch.as_tensor(asset["basis"], dtype=torch.float32),
                                 persistent=False)

    def export_spec(self) -> ExportSpec:
        """ONNX export (hpe_bench.export): the crop image in, the raw crop-frame heads out; the 6DoF pose needs
        the crop's ``A`` and ``K`` (``codecs.opnet.decode``, docs/deployment.md)."""
        outputs = {
            "quat": ("quat", "(N, 4) unit quaternion (x, y, z, w), w > 0: head (BFM68) frame -> crop frame"),
            "R_crop": ("R_crop", "(N, 3, 3) rotation matrix of quat (crop frame, orthographic)"),
            "coord": ("coord", "(N, 3) head position (x, y) and size in normalised crop units ([-1, 1], y down)"),
            "roi": ("roi", "(N, 4) face box (x0, y0, x1, y1) in normalised crop units"),
            "shape_params": ("shape_params", "(N, 50) BFM68 shape coefficients (40 identity + 10 expression)"),
            "landmarks": ("landmarks_crop", "(N, 68, 3) posed BFM68 landmarks in normalised crop units"),
            "rot_scale_tril": ("rot_scale_tril",
                               "(N, 3, 3) Cholesky factor of the rotation-error covariance (so(3), rad)"),
            "coord_scale_tril": ("coord_scale_tril", "(N, 3, 3) Cholesky factor of the coord covariance"),
        }
        return ExportSpec(inputs=("image",), outputs=outputs, in_chans=1,
                          constants=("roi_scale", "points_scale", "shape_scale"))

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = self.dropout(self.backbone(inputs["image"]))  # (B, F), one dropout for all heads
        # Under mixed precision only the backbone runs in autocast: the linear heads, their maps and the codec
        # are float32, so the quaternion, R and the landmarks are not rounded to bfloat16.
        with autocast_off(feats):
            return self._heads(to_float32(feats), inputs)

    def _heads(self, feats: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        z = self.quat_head(feats)
        # w > 0 removes the q / -q ambiguity and biases toward small rotations (paper Sec. 2.1).
        quat_raw = torch.cat([z[:, :3], smoothclip(z[:, 3:])], dim=-1)  # kept for the norm penalty
        quat = quat_raw / quat_raw.norm(dim=-1, keepdim=True)
        coord = torch.cat([self.xy_head(feats), smoothclip(self.size_head(feats))], dim=-1)
        zb = self.box_head(feats)
        centre, half = zb[:, :2], smoothclip(zb[:, 2:])
        roi = torch.cat([centre - half, centre + half], dim=-1)

        out = {
            "quat": quat,
            "quat_raw": quat_raw,
            "R_crop": G.quat_to_matrix(quat),
            "coord": coord,
            "roi": roi,
            "rot_scale_tril": self.rot_unc(feats),
            "coord_scale_tril": self.coord_unc(feats),
            "roi_scale": self.roi_scale(),
        }
        if self.landmarks:
            shape_params = self.shape_head(feats)
            out["shape_params"] = shape_params
            out["landmarks_crop"] = pose_landmarks(quat, coord, shape_params, self.bfm_mean, self.bfm_basis)
            out["points_scale"] = self.points_scale()
            out["shape_scale"] = self.shape_scale()
        L = out["rot_scale_tril"]
        out["per_sample"] = {"sigma_rot_frobenius": torch.linalg.matrix_norm(L @ L.transpose(-1, -2)).detach()}
        if "A" in inputs and "K" in inputs:  # on CropInput's output; a bare crop (ONNX export) stays in crop space
            out.update(codec.decode(out, inputs))
        return out
