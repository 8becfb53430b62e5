"""TRG's loss as the authors' training code computes it (TRG-Release ``train.py`` + ``models/trg_loss.py``).

The published numbers were trained with these reductions, and the lambdas of the paper (20, 2, 0.01, 10, 2, 1.25)
were tuned with them; ``losses/trg.py`` (``loss=trg_paper``) keeps the paper's formulas (sums, Frobenius
distance), which weigh the same lambdas differently (docs/reproducing.md, "Loss balance"). The exact words and
whole-batch reference values are in ``shared/reference/losses/`` (``trg_loss_cases.md``); the tests reproduce
every term of those cases.

Per iteration ``i = 1..T`` with weight ``loop^(T - i)`` (1/4, 1/2, 1), on the network's ``*_iters`` lists:

- ``head`` (the authors' ``world``): mean absolute error over the labelled samples, the vertices AND the three
  components (metres, head frame).
- ``cam``: the same on camera-frame vertices ``V R^T + t`` (needs ``has_R``, ``has_t`` too).
- ``img``: mean absolute error of the projected full-image pixels over the vertices and the two components, summed
  over the samples with 3D labels and K and divided by the WHOLE batch B (2D term: a 0/1 confidence, not a
  selection).
- ``rot``: ``|R - R*|_F^2 / 9`` (mean squared error over the 9 entries), mean over the samples with 3D labels
  (``has_vertices`` and ``has_R``: the authors' ``has_rot``; a 2D-landmark dataset's own R labels, e.g. 300W-LP's,
  are not used, as in the paper).
- ``landmarks5`` (not in the paper, weight 0.1): the 5 keypoint vertices (inner eye corners, nose bottom, mouth
  corners) of the predicted camera-frame face, projected with the full-image K the network used
  (``inputs["K"]``), moved into the crop and normalised ``2 x / S - 1``; L1 against the same 5 rows of the
  landmark labels, mean over the two components, the 5 points and the whole batch B, times the confidence.

Once:

- ``ed`` (last iteration, weight 1): the edge-length error summed over the three directed edges of each of the
  2,304 triangles, mean over triangles and labelled samples (i.e. 3 x the mean over the 6,912 directed edges).
- ``landmarks`` (the authors' ``lmk68``): L1 on the 68 heatmap landmarks in the authors' normalised crop
  coordinates, mean over the two components, the 68 landmarks and the whole batch B, times the confidence.

Masking (the authors' rule): 3D terms (head, cam, rot, ed) average over the samples that have the label;
2D terms (img, landmarks5, landmarks) multiply each error by a 0/1 confidence and divide by the whole batch.
The landmark labels follow the authors' two data pipelines, chosen per sample by ``has_vertices``:

- 3D-labelled samples (their ARKitFace pipeline): crop px ``x_c = (x - x0) S / b`` (``inputs["A"]``), confidence
  1 for every landmark, even outside the crop.
- 2D-only samples (their 300W-LP pipeline, an OpenCV warp of the box onto ``0..S-1``): crop px
  ``x_c (S - 1) / S``, confidence 1 only inside the crop ``[0, S)``.

The predictions are never rescaled: the heatmap landmarks (the authors' raw soft-argmax output, crop px / S x 2 - 1)
and the projected 5 landmarks (``x_c = (x - x0) S / b``) are compared with either pipeline's labels as they are, so
on 2D-only samples a prediction on the project's label misses the authors' label by ``2 x_c / S^2`` per coordinate
(up to ``2 / S`` at the far edge; the authors' code, ``shared/reference/losses/trg_loss_cases.md``, "Erratum").

A sample without the 68 landmark labels has confidence 0 (and still counts in B). Deliberate departure: a batch
with no labelled sample gives 0 for head, cam, rot and ``ed`` (the authors' edge term is NaN there, the mean of
an empty selection). Models without a predicted face (landmark-free baseline) get 0 for head, ed and landmarks5,
and their cam / img terms pose the GT face, as in ``losses/trg.py``. Returned: every weighted term
(``lambda x sum_i w_i x term_i``, what the authors log) and their sum under ``loss``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .. import geometry as G
from ..assets import ARKIT_TOPOLOGY, arkit_face
from .masking import masked_batch_mean, masked_mean
from .trg import edge_length_error, project_where, vertex_labels

TERMS = ("head", "cam", "img", "rot", "ed", "landmarks", "landmarks5")
# 0-based iBUG-68 indices of the authors' 5 landmarks: inner eye corners, nose bottom centre, mouth corners.
LANDMARKS5 = (39, 42, 33, 48, 54)


def directed_triangle_edges(triangles) -> Tensor:
    """``(3F, 2)`` int64: the edges ``(f0, f1), (f1, f2), (f2, f0)`` of every triangle ``(F, 3)`` (an interior edge
    appears once per triangle, as the authors' edge term counts it)."""
    tri = torch.as_tensor(np.asarray(triangles, dtype=np.int64))
    return torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], 0)


def _authors_normalized(px: Tensor, size: int) -> Tensor:
    """Crop px ``(..., 2)`` -> ``2 x / S - 1``, the TRG code's normalisation (its landmark labels, 5-landmark term
    and sampler; the box corners, crop px 0 and S under ``geometry.crop_transform``, at -1 and +1)."""
    return G.normalize_sampling_points(px, size, divisor="size")


def _mean_abs(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean absolute error over points and components: ``(B, N, D) -> (B,)``."""
    return (a - b).abs().mean((-2, -1))


class TRGCodeLoss(nn.Module):
    """Args: lambdas (authors' ``run_train.sh``: head 20, cam 2, img 0.01, rot 10, ed 2, landmarks 1.25,
    landmarks5 0.1), ``loop`` (iteration weight ``loop^(T - i)``, 0.5). A lambda of 0 skips its term."""

    def __init__(self, head: float = 20.0, cam: float = 2.0, img: float = 0.01, rot: float = 10.0,
                 ed: float = 2.0, landmarks: float = 1.25, landmarks5: float = 0.1, loop: float = 0.5,
                 topology: str = ARKIT_TOPOLOGY):
        super().__init__()
        self.weights = {"head": float(head), "cam": float(cam), "img": float(img), "rot": float(rot),
                        "ed": float(ed), "landmarks": float(landmarks), "landmarks5": float(landmarks5)}
        self.loop, self.topology = float(loop), topology
        face = arkit_face()
        self.n_vertices = len(face["mean_vertices"])
        self.register_buffer("edges", directed_triangle_edges(face["triangles"]), persistent=False)
        self.register_buffer("landmarks5_vertices", torch.as_tensor(face["keypoints_68"][list(LANDMARKS5)],
                                                                    dtype=torch.long), persistent=False)

    def iteration_weights(self, n: int) -> list[float]:
        """``loop^(n - i)`` for ``i = 1..n`` (1/4, 1/2, 1 for three iterations and loop 0.5)."""
        return [self.loop ** (n - i) for i in range(1, n + 1)]

    # -- landmark labels in the authors' units -------------------------------------------------------------
    @staticmethod
    def landmark_labels(batch: Mapping[str, Any], A: Tensor, S: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_c (B, 68, 2), scale (B, 1, 1), confidence (B, 68))``: the labels in the project's crop px
        (``A``), the authors' per-pipeline scale (1, or ``(S - 1) / S`` for 2D-only samples) and confidence."""
        B, dev = like.shape[0], like.device
        has_lm = batch["has_landmarks_2d"].to(dev).bool()
        lm = torch.where(has_lm.view(B, 1, 1), batch["landmarks_2d"].to(like), torch.zeros((), dtype=like.dtype,
                                                                                              device=dev))
        x_c = G.apply_transform_2d(A.to(like), lm)
        two_d = ~batch["has_vertices"].to(dev).bool()
        scale = torch.where(two_d, (S - 1) / S, 1.0).to(like).view(B, 1, 1)
        inside = ((x_c * scale >= 0) & (x_c * scale < S)).all(-1)
        conf = has_lm.view(B, 1) & (inside | ~two_d.view(B, 1))
        return x_c, scale, conf.to(like.dtype)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, pred: Mapping[str, Any], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and ``loss``; ``inputs`` is ``CropInput``'s output (``A``, ``K``, the image of side S)."""
        w = self.weights
        R_iters, t_iters = pred["R_iters"], pred["t_iters"]
        geometry = "vertices_iters" in pred
        like = pred["vertices_iters"][-1] if geometry else R_iters[-1]
        dev, B = like.device, like.shape[0]
        S = int(inputs["image"].shape[-1])
        A, K_net = inputs["A"].to(like), inputs["K"].to(like)
        has = {k: batch[f"has_{k}"].to(dev).bool() for k in ("R", "t", "K")}
        V_gt, has_v = vertex_labels(batch, like.shape[1] if geometry else self.n_vertices, like, self.topology)
        V_iters = pred["vertices_iters"] if geometry else [V_gt] * len(R_iters)
        R_gt, t_gt, K = batch["R"].to(like), batch["t"].to(like), batch["K"].to(like)
        has_pose = has_v & has["R"] & has["t"]
        has_img = has_pose & has["K"]
        # The authors' has_rot is their 3D-label flag: 300W-LP's own rotations (has_R) train nothing here.
        has_rot = has_v & has["R"]
        zero = like.sum() * 0.0  # keeps the graph for terms without labels
        raw = {k: zero for k in TERMS}

        need_cam = w["cam"] != 0 or w["img"] != 0
        if need_cam:
            cam_gt = G.transform_points(V_gt, R_gt, t_gt)
            img_gt = project_where(cam_gt, K, has_img)
        need_lm = (w["landmarks5"] != 0 and geometry) or (w["landmarks"] != 0 and "heatmap_landmarks" in pred)
        if need_lm:
            lm_c, lm_scale, lm_conf = self.landmark_labels(batch, A, S, like)
        if w["landmarks5"] != 0 and geometry:
            idx = list(LANDMARKS5)
            target5 = _authors_normalized(lm_c[:, idx] * lm_scale, S)
            conf5, has_lm5 = lm_conf[:, idx], lm_conf[:, idx].sum(-1) > 0
        for weight, V, R, t in zip(self.iteration_weights(len(V_iters)), V_iters, R_iters, t_iters):
            if w["head"] != 0 and geometry:
                raw["head"] = raw["head"] + weight * masked_mean(_mean_abs(V, V_gt), has_v)
            if need_cam or (w["landmarks5"] != 0 and geometry):
                cam = G.transform_points(V, R, t)
            if w["cam"] != 0:
                raw["cam"] = raw["cam"] + weight * masked_mean(_mean_abs(cam, cam_gt), has_pose)
            if w["img"] != 0:
                img = project_where(cam, K, has_img)
                raw["img"] = raw["img"] + weight * masked_batch_mean(_mean_abs(img, img_gt), has_img)
            if w["rot"] != 0:
                rot = (R - R_gt).square().mean((-2, -1))
                raw["rot"] = raw["rot"] + weight * masked_mean(rot, has_rot)
            if w["landmarks5"] != 0 and geometry:
                # Every sample with landmark labels counts (through the K the network used for its translation).
                px = project_where(cam[:, self.landmarks5_vertices], K_net, has_lm5)
                q = _authors_normalized(G.apply_transform_2d(A, px), S)
                err = ((q - target5).abs() * conf5.unsqueeze(-1)).mean((-2, -1))
                raw["landmarks5"] = raw["landmarks5"] + weight * masked_batch_mean(err, has_lm5)
        if w["ed"] != 0 and geometry:
            raw["ed"] = 3.0 * masked_mean(edge_length_error(V_iters[-1], V_gt, self.edges).mean(-1), has_v)
        if w["landmarks"] != 0 and "heatmap_landmarks" in pred:
            pred_c = G.normalized_to_crop(pred["heatmap_landmarks"], S)
            # The authors compare their raw soft-argmax output (crop px / S x 2 - 1) with each pipeline's label,
            # the 2D pipeline's made by OpenCV's (S - 1) / b warp: only the label carries lm_scale.
            err = ((_authors_normalized(pred_c, S) - _authors_normalized(lm_c * lm_scale, S))
                   .abs() * lm_conf.unsqueeze(-1)).mean((-2, -1))
            raw["landmarks"] = err.sum() / B

        terms = {k: w[k] * raw[k] for k in TERMS}
        terms["loss"] = sum(terms.values())
        return terms
