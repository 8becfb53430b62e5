"""OpNet's training loss (paper Eqs. 7-8): regression terms plus ``beta_total`` times the NLL terms.

Expected **prediction** keys (``hpe_bench.models.opnet``; all in OpNet's crop space):

- ``quat (B, 4)`` unit xyzw; ``quat_raw (B, 4)`` the same before normalisation (norm penalty);
- ``coord (B, 3)`` ``(x, y, size)``; ``rot_scale_tril``, ``coord_scale_tril`` ``(B, 3, 3)``;
- ``roi (B, 4)`` ``(x0, y0, x1, y1)``; ``roi_scale (4,)`` std of the corners;
- ``shape_params (B, 50)``, ``shape_scale (50,)``; ``landmarks_crop (B, 68, 3)``, ``points_scale (68,)``
  (Laplace b per point, shared over xyz). These four are optional together: a model built without the
  landmark head does not output them, and their terms are then left out (reported as 0).

Crop-space **targets** (``codecs.opnet.encode``, the codec whose ``decode`` gives the network's camera-frame
predictions): ``forward(pred, batch, inputs)`` encodes them from the schema labels of ``batch`` and the crop
``inputs`` (``CropInput``'s output), then calls ``weighted_terms(pred, targets)``, which tests and callers with
precomputed targets use directly. Targets: ``quat (B, 4)``, ``coord (B, 3)``, ``roi (B, 4)``,
``shape_params (B, 50)``, ``landmarks_crop (B, 68, 3)``, each with a ``has_<key> (B,)`` bool mask; optionally
``has_landmarks_crop_z (B,)`` -- where False only x, y of the landmarks count (2D-only datasets); when absent
z counts wherever landmarks exist.

Each term is masked per sample by its label's ``has_`` mask and reduced with ``masked_batch_mean``
(sum over labelled samples / batch size, the paper's ``1/B``). The quaternion-norm penalty needs no
label and applies to every sample.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..codecs import opnet as codec
from . import opnet_terms as T
from .masking import masked_batch_mean

_LANDMARK_WEIGHTS = {"paper": T.LANDMARK_WEIGHTS_PAPER, "code": T.LANDMARK_WEIGHTS_CODE}


def _target(targets: Mapping[str, Tensor], key: str, pred: Tensor) -> tuple[Tensor, Tensor]:
    """``(target, has)`` with the target replaced by the detached prediction where the label is absent.

    Masking alone is not enough: a placeholder label (zeros, or NaN) could make the per-sample value
    non-finite, and ``nan * 0`` still poisons the sum and the gradients.
    """
    has = targets[f"has_{key}"].to(device=pred.device, dtype=torch.bool)
    target = targets[key].to(pred)
    m = has.reshape(has.shape + (1,) * (pred.dim() - 1))
    return torch.where(m, target, pred.detach()), has


class OpNetLoss(nn.Module):
    """Weighted sum of OpNet's loss terms; defaults are the paper's weights.

    ``alpha_*`` weight the regression terms (rot: ``1 - (q_hat.q)^2``; coord: L2 of (x, y, size);
    shape: L2; points: weighted L1; roi: L2 of the corners; quat_norm: ``(1 - |q'|)^2``). ``beta_*``
    weight the NLLs, all multiplied by ``beta_total``. ``landmark_weights`` is ``"paper"`` (eyelids 0)
    or ``"code"`` (also chin contour 0.8); ``l2_reduction`` ``"sum"`` (paper Eq. 3) or ``"mean"``
    (reference code) over the components of shape, roi and coord's position (x, y); coord's size error is
    added to the position's (``opnet_terms.coord_squared_error``: the reference code's ``xy`` + ``sz``).

    ``forward(pred, batch, inputs)`` (and ``weighted_terms(pred, targets)``) return the weighted terms under
    ``rot, coord, shape, points, roi, quat_norm, nll_rot, nll_coord, nll_shape, nll_points, nll_roi`` and their
    sum under ``loss``.
    """

    def __init__(self, alpha_rot: float = 1.0, alpha_coord: float = 1.0, alpha_shape: float = 0.01,
                 alpha_points: float = 1.0, alpha_roi: float = 0.01, alpha_quat_norm: float = 1e-6,
                 beta_total: float = 0.01, beta_rot: float = 1.0, beta_coord: float = 1.0,
                 beta_shape: float = 0.01, beta_points: float = 1.0, beta_roi: float = 0.01,
                 landmark_weights: str = "paper", l2_reduction: str = "sum"):
        super().__init__()
        if landmark_weights not in _LANDMARK_WEIGHTS:
            raise ValueError(f"landmark_weights must be one of {sorted(_LANDMARK_WEIGHTS)}, got {landmark_weights!r}")
        self.alpha = dict(rot=alpha_rot, coord=alpha_coord, shape=alpha_shape, points=alpha_points,
                          roi=alpha_roi, quat_norm=alpha_quat_norm)
        self.beta = dict(rot=beta_rot, coord=beta_coord, shape=beta_shape, points=beta_points, roi=beta_roi)
        self.beta_total = beta_total
        self.l2_reduction = l2_reduction
        self.register_buffer("landmark_weights", _LANDMARK_WEIGHTS[landmark_weights].clone(), persistent=False)

    def unweighted_terms(self, pred: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each term reduced over the batch, before weighting (scalars); ``targets`` as ``codecs.opnet.encode``
        returns them."""
        l2 = lambda a, b: T.squared_error(a, b, self.l2_reduction)  # noqa: E731
        out: dict[str, Tensor] = {}

        q, has = _target(targets, "quat", pred["quat"])
        out["rot"] = masked_batch_mean(T.quat_rotation_loss(pred["quat"], q), has)
        out["nll_rot"] = masked_batch_mean(T.so3_nll(pred["quat"], q, pred["rot_scale_tril"]), has)

        c, has = _target(targets, "coord", pred["coord"])
        out["coord"] = masked_batch_mean(T.coord_squared_error(pred["coord"], c, self.l2_reduction), has)
        out["nll_coord"] = masked_batch_mean(T.coord_nll(pred["coord"], c, pred["coord_scale_tril"]), has)

        roi, has = _target(targets, "roi", pred["roi"])
        out["roi"] = masked_batch_mean(l2(pred["roi"], roi), has)
        out["nll_roi"] = masked_batch_mean(T.gaussian_nll_diag(pred["roi"], roi, pred["roi_scale"]), has)

        q_raw = pred["quat_raw"]
        out["quat_norm"] = masked_batch_mean(T.quat_norm_loss(q_raw), torch.ones_like(q_raw[:, 0], dtype=torch.bool))

        zero = pred["quat"].sum() * 0.0  # keeps device, dtype and graph when a head is absent
        if "shape_params" in pred:
            s, has = _target(targets, "shape_params", pred["shape_params"])
            out["shape"] = masked_batch_mean(l2(pred["shape_params"], s), has)
            out["nll_shape"] = masked_batch_mean(T.gaussian_nll_diag(pred["shape_params"], s, pred["shape_scale"]), has)
        else:
            out["shape"] = out["nll_shape"] = zero
        if "landmarks_crop" in pred:
            p_hat = pred["landmarks_crop"]
            p, has = _target(targets, "landmarks_crop", p_hat)
            use_z = targets.get("has_landmarks_crop_z")
            use_z = has if use_z is None else use_z.to(device=p_hat.device, dtype=torch.bool)
            w = self.landmark_weights
            out["points"] = masked_batch_mean(T.weighted_l1_points(p_hat, p, w, use_z), has)
            out["nll_points"] = masked_batch_mean(T.laplace_points_nll(p_hat, p, pred["points_scale"], w, use_z), has)
        else:
            out["points"] = out["nll_points"] = zero
        return out

    def forward(self, pred: Mapping[str, Tensor], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms of ``pred`` against the targets encoded from ``batch``'s labels and the crop ``inputs``."""
        return self.weighted_terms(pred, codec.encode(batch, inputs))

    def weighted_terms(self, pred: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and their sum under ``loss``, against precomputed crop-space ``targets``."""
        raw = self.unweighted_terms(pred, targets)
        terms = {k: self.alpha[k] * raw[k] for k in self.alpha}
        terms.update({f"nll_{k}": self.beta_total * self.beta[k] * raw[f"nll_{k}"] for k in self.beta})
        terms["loss"] = sum(terms.values())
        return terms
