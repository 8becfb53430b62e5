"""Loss of the direct 6DoF regression baseline."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from .masking import masked_mean
from .trg import landmark_l1


class DirectRegressionLoss(nn.Module):
    """``rot``: squared Frobenius distance ``|R_hat - R|_F^2`` (= 4 (1 - cos angle) for rotations), or with
    ``rot_norm="frobenius"`` the distance itself ``|R_hat - R|_F`` (= 2 sqrt(2) sin(angle / 2), TRG's rotation
    term): its gradient does not fade as the error shrinks, which keeps refining small errors;
    ``trans``: L1 of the translation in metres; ``landmarks`` (auxiliary, only when the net predicts
    ``heatmap_landmarks``): per-landmark L1 in the crop's normalised ``[-1, 1]`` frame, TRG's landmark term (the
    GT is ``crop_to_normalized(A landmarks_2d)``). Each averaged over the samples that have the label."""

    def __init__(self, rot: float = 1.0, trans: float = 1.0, landmarks: float = 0.0, rot_norm: str = "squared"):
        super().__init__()
        if rot_norm not in ("squared", "frobenius"):
            raise ValueError(f"loss.rot_norm must be 'squared' or 'frobenius', got {rot_norm!r}")
        self.rot_norm = rot_norm
        self.w_rot, self.w_trans, self.w_landmarks = rot, trans, landmarks

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and ``loss``; ``inputs`` (the network's input) is part of the loss interface, unused."""
        sq = (pred["R"] - batch["R"]).square().sum((-1, -2))
        # sqrt(x + eps): finite gradient at a perfect prediction
        rot = masked_mean(sq if self.rot_norm == "squared" else (sq + 1e-12).sqrt(), batch["has_R"])
        trans = masked_mean((pred["t"] - batch["t"]).abs().sum(-1), batch["has_t"])
        terms = {"rot": self.w_rot * rot, "trans": self.w_trans * trans}
        if self.w_landmarks and "heatmap_landmarks" in pred:
            per_sample = landmark_l1(pred["heatmap_landmarks"], batch, inputs)
            terms["landmarks"] = self.w_landmarks * masked_mean(per_sample, batch["has_landmarks_2d"])
        terms["loss"] = sum(terms.values())
        return terms
