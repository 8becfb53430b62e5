"""Direct 6DoF regression baseline: backbone -> pooled features (+ box features) -> 6D rotation + translation.

The landmark-free baseline both papers compare against (TRG Table 2, "Direct 6DoF Regress"; PerspNet).
Translation is regressed in metres; because a resized crop has lost its scale and position in the full
image, the head also reads TRG's box features ``I_bbox = (tau_x / f, tau_y / f, b / f)`` (plus
``log(b / f)``, which makes depth ~ 1 / (b / f) an easier function to fit). ``use_bbox_info=False``
gives the crop-only variant.

Two output parametrisations (defaults: the plain baseline, camera frame and metres):

- ``rotation_frame="ray"``: the 6D head predicts the orientation relative to the crop's viewing ray (the local
  camera looking through the box centre, ``trg_parts.local_frame``), ``R = Q R_local``. A crop shows the head
  as seen along that ray, so an off-axis head (up to ~45 degrees off-axis at a 90 degree field of view) looks
  the same as an on-axis one rotated by ``Q^T``: predicting ``R`` in the camera frame makes the network learn
  that composition from ``bbox_info``; in the ray frame it only reads the appearance.
- ``translation="correction"``: TRG's box correction (paper Eq. 2, ``trg_parts.correction_to_translation``): scale
  and image offset relative to the crop box, turned into metres with ``K``; ``"direct"`` regresses metres.

``landmarks=True`` adds an auxiliary head regressing the 68 2D landmarks in the crop's normalised frame
(``heatmap_landmarks (B, 68, 2)`` in ``[-1, 1]``, the key TRG's landmark loss reads; ``landmarks_2d`` in
full-image pixels for the NME metric). Trained with ``loss.landmarks > 0``, its dense per-point targets give the
backbone a pose-bearing signal from the first steps, where the 9 pose numbers alone leave a from-scratch network
predicting a constant pose for its first few hundred steps (docs/reproducing.md, the demo).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import geometry as G
from ..deploy.spec import POSE_OUTPUTS, ExportSpec
from ..schema import NUM_LANDMARKS
from . import register_model
from .backbones import create_backbone
from .mixed_precision import autocast_off, to_float32
from .trg_parts import local_frame, params_to_translation

ROTATION_FRAMES = ("camera", "ray")
TRANSLATIONS = ("direct", "correction")


@register_model("direct_regression")
class DirectRegression(nn.Module):
    """``forward(inputs) -> {"R": (B, 3, 3), "t": (B, 3) metres}`` from ``CropInput`` outputs."""

    def __init__(self, backbone: str = "resnet18", pretrained: bool = False, in_chans: int = 3,
                 hidden: int = 256, dropout: float = 0.0, use_bbox_info: bool = True,
                 rotation_frame: str = "camera", translation: str = "direct", landmarks: bool = False):
        super().__init__()
        if rotation_frame not in ROTATION_FRAMES:
            raise ValueError(f"model.net.rotation_frame must be one of {ROTATION_FRAMES}, got {rotation_frame!r}")
        if translation not in TRANSLATIONS:
            raise ValueError(f"model.net.translation must be one of {TRANSLATIONS}, got {translation!r}")
        self.rotation_frame, self.translation = rotation_frame, translation
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans)
        self.use_bbox_info, self.in_chans = use_bbox_info, int(in_chans)
        n_in = self.backbone.num_features + (4 if use_bbox_info else 0)
        self.head = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, 9))
        self.landmark_head = nn.Linear(n_in, 2 * NUM_LANDMARKS) if landmarks else None
        # Start at the identity rotation, 1 m in front of the camera (direct) or at the box's own estimate
        # (correction s = 1, no offset), so early losses are sane.
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        with torch.no_grad():
            t0 = [0, 0, 1.0] if translation == "direct" else [1.0, 0, 0]
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0] + t0))

    def export_spec(self) -> ExportSpec:
        """ONNX export (hpe_bench.export): the crop (and its box features) in, the 6DoF pose out."""
        inputs = ("image", "bbox_info") if self.use_bbox_info else ("image",)
        if self.rotation_frame == "ray" or self.translation != "direct":
            inputs += ("box", "K")
        outputs = dict(POSE_OUTPUTS)
        if self.landmark_head is not None:
            inputs += ("A",) if "A" not in inputs else ()
            outputs["landmarks_2d"] = ("landmarks_2d", "(N, 68, 2) landmarks in full-image pixels")
        return ExportSpec(inputs=inputs, outputs=outputs, in_chans=self.in_chans)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = self.backbone(inputs["image"])
        # Under mixed precision only the backbone runs in autocast: the heads and every output geometry are
        # float32, so R stays a rotation (mixed_precision.autocast_off).
        with autocast_off(feats):
            return self._heads(to_float32(feats), inputs)

    def _heads(self, feats: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.use_bbox_info:
            info = inputs["bbox_info"]
            feats = torch.cat([feats, info, torch.log(info[:, 2:3].clamp_min(1e-6))], -1)
        out = self.head(feats)
        R, t = G.sixd_to_matrix(out[:, :6]), out[:, 6:9]
        if self.rotation_frame == "ray":
            R = local_frame(inputs["box"], inputs["K"]) @ R
        if self.translation != "direct":
            t = params_to_translation(self.translation, t, inputs["box"], inputs["K"])
        out = {"R": R, "t": t}
        if self.landmark_head is not None:
            S = inputs["image"].shape[-1]
            lm = self.landmark_head(feats).view(-1, NUM_LANDMARKS, 2)
            out["heatmap_landmarks"] = lm
            crop_px = G.normalized_to_crop(lm, S)
            out["landmarks_2d"] = G.apply_transform_2d(torch.linalg.inv(inputs["A"].to(lm)), crop_px)
        return out
