"""Loss of the direct 6DoF regression baseline."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from .masking import masked_mean


class DirectRegressionLoss(nn.Module):
    """``rot``: squared Frobenius distance ``|R_hat - R|_F^2`` (= 4 (1 - cos angle) for rotations);
    ``trans``: L1 of the translation in metres. Each averaged over the samples that have the label."""

    def __init__(self, rot: float = 1.0, trans: float = 1.0):
        super().__init__()
        self.w_rot, self.w_trans = rot, trans

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and ``loss``; ``inputs`` (the network's input) is part of the loss interface, unused."""
        rot = masked_mean((pred["R"] - batch["R"]).square().sum((-1, -2)), batch["has_R"])
        trans = masked_mean((pred["t"] - batch["t"]).abs().sum(-1), batch["has_t"])
        terms = {"rot": self.w_rot * rot, "trans": self.w_trans * trans}
        terms["loss"] = sum(terms.values())
        return terms
