"""A rotation-only 6D regressor in the style of 6DRepNet (Hempel, Abdelrahman & Al-Hamadi, ICIP 2022).

A timm backbone, one linear layer to 6 numbers, and Gram-Schmidt to a rotation matrix: 6DRepNet's
``compute_rotation_matrix_from_ortho6d`` (normalise the first 3-vector, cross it with the second, normalise,
cross again) builds the same matrix as ``geometry.sixd_to_matrix`` (columns b1, b2, b3), which is used here.
6DRepNet's backbone is RepVGG-B1g2 on a 224 px RGB crop; any timm trunk works (``backbone``).

It predicts rotation only (no translation, no landmarks): the harness reports rotation metrics for it and
leaves translation out (``t`` NaN in predictions.parquet), and it exports to ONNX as ``image -> R``.
Trained with the geodesic loss 6DRepNet uses (``hpe_bench/losses/geodesic.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import geometry as G
from ..deploy.spec import POSE_OUTPUTS, ExportSpec
from . import register_model
from .backbones import create_backbone
from .mixed_precision import autocast_off, to_float32


@register_model("sixdrepnet")
class SixDRepNet(nn.Module):
    """``forward({"image": (B, C, S, S)}) -> {"R": (B, 3, 3)}``: head frame -> camera frame, from the crop alone.

    Args:
        backbone: timm model name (6DRepNet: ``repvgg_b1g4``-like RepVGG; ``repvgg_a0`` is the small one).
        pretrained: ImageNet weights where available (offline: random init with a warning).
        in_chans: image channels (3; 1 with ``model.crop.grayscale=true``).
        dropout: before the linear 6D head (6DRepNet: none).
    """

    def __init__(self, backbone: str = "repvgg_a0", pretrained: bool = False, in_chans: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.in_chans = int(in_chans)
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, 6)
        # Start at the identity rotation (6D = its first two columns), so the first losses are moderate.
        nn.init.normal_(self.head.weight, std=1e-3)
        with torch.no_grad():
            self.head.bias.copy_(G.matrix_to_sixd(torch.eye(3)))

    def export_spec(self) -> ExportSpec:
        """ONNX export (hpe_bench.export): the crop in, the rotation out."""
        return ExportSpec(inputs=("image",), outputs={"R": POSE_OUTPUTS["R"]}, in_chans=self.in_chans)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = self.dropout(self.backbone(inputs["image"]))
        with autocast_off(feats):  # the head and the matrix in float32 under mixed precision
            return {"R": G.sixd_to_matrix(self.head(to_float32(feats)))}  # (B, 6) -> (B, 3, 3)
