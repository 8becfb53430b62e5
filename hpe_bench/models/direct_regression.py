"""Direct 6DoF regression baseline: backbone -> pooled features (+ box features) -> 6D rotation + translation.

The landmark-free baseline both papers compare against (TRG Table 2, "Direct 6DoF Regress"; PerspNet).
Translation is regressed in metres; because a resized crop has lost its scale and position in the full
image, the head also reads TRG's box features ``I_bbox = (tau_x / f, tau_y / f, b / f)`` (plus
``log(b / f)``, which makes depth ~ 1 / (b / f) an easier function to fit). ``use_bbox_info=False``
gives the crop-only variant.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import geometry as G
from ..deploy.spec import POSE_OUTPUTS, ExportSpec
from . import register_model
from .backbones import create_backbone


@register_model("direct_regression")
class DirectRegression(nn.Module):
    """``forward(inputs) -> {"R": (B, 3, 3), "t": (B, 3) metres}`` from ``CropInput`` outputs."""

    def __init__(self, backbone: str = "resnet18", pretrained: bool = False, in_chans: int = 3,
                 hidden: int = 256, dropout: float = 0.0, use_bbox_info: bool = True):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans)
        self.use_bbox_info, self.in_chans = use_bbox_info, int(in_chans)
        n_in = self.backbone.num_features + (4 if use_bbox_info else 0)
        self.head = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, 9))
        # Start at the identity rotation, 1 m in front of the camera, so early losses are sane.
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]))

    def export_spec(self) -> ExportSpec:
        """ONNX export (hpe_bench.export): the crop (and its box features) in, the 6DoF pose out."""
        inputs = ("image", "bbox_info") if self.use_bbox_info else ("image",)
        return ExportSpec(inputs=inputs, outputs=dict(POSE_OUTPUTS), in_chans=self.in_chans)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = self.backbone(inputs["image"])
        if self.use_bbox_info:
            info = inputs["bbox_info"]
            feats = torch.cat([feats, info, torch.log(info[:, 2:3].clamp_min(1e-6))], -1)
        out = self.head(feats)
        return {"R": G.sixd_to_matrix(out[:, :6]), "t": out[:, 6:9]}
