"""The geodesic rotation loss of 6DRepNet: the mean angle (radians) between predicted and true rotations."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from .. import geometry as G
from .masking import masked_mean


class GeodesicLoss(nn.Module):
    """``rot``: mean of ``angle(R_hat^T R)`` in radians over the samples that have a rotation label.

    6DRepNet computes the angle as ``acos(clamp((trace(R_hat R^T) - 1) / 2, -1 + eps, 1 - eps))``; this uses
    ``geometry.geodesic_angle`` (the same angle by ``atan2``, accurate near 0 and pi, where ``acos`` loses
    precision and its gradient blows up) so that the one geometry module owns the rule.
    """

    def __init__(self, rot: float = 1.0):
        super().__init__()
        self.w_rot = float(rot)

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and ``loss``; ``inputs`` (the network's input) is part of the loss interface, unused."""
        rot = masked_mean(G.geodesic_angle(pred["R"], batch["R"]), batch["has_R"])
        terms = {"rot": self.w_rot * rot}
        terms["loss"] = terms["rot"]
        return terms
