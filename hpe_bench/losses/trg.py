"""Loss of TRG as the paper writes it (Chun & Chang, ECCV 2024, Sec. 3.5, Eqs. 4-7): ``loss=trg_paper``. The
authors trained with other reductions at the same lambdas: ``losses/trg_code.py`` (``loss=trg_code``, the default;
docs/reproducing.md, "Loss balance", has the measured ratios). (The paper's step learning-rate schedule is
``schedules.paper_step_schedule``.)

Per iteration ``t = 1..T`` (weight ``2^(t-T)``: 1/4, 1/2, 1 for T = 3), on the network's ``*_iters`` lists:

- ``head``: per-vertex L1 norm ``|V_t,n - V*_n|_1`` (metres, summed over x, y, z) averaged over the vertices
  (Eq. 4, the ``1/N^V sum_n |.|_1`` form), head frame. Needs ``has_vertices`` with the model's vertex count.
- ``cam``: the same on camera-frame vertices ``geometry.transform_points(V, R, t)`` pred vs GT; needs
  ``has_vertices``, ``has_R``, ``has_t``.
- ``img``: the same on the projected full-image pixels ``geometry.project_points(V_cam, K)`` (the batch's K for
  both); needs ``has_K`` as well.
- ``rot``: Frobenius distance ``|R_t - R*|_F``, NOT squared (paper Eq. 4; the reference code uses the MSE
  over the 9 entries, i.e. ``|.|_F^2 / 9``). Zero-safe: ``torch.linalg.matrix_norm`` has a 0 subgradient at 0.
  Needs ``has_R``.

Once, on the final vertices:

- ``ed``: edge-length L1 ``| |V_n - V_m|_2 - |V*_n - V*_m|_2 |`` (metres) averaged over the unique edges of the
  ARKit triangles (Eq. 5 sums over triangles and their edges; normalised here by the 3,526 unique edges). This
  is about 1/3 of the authors' code, which adds three per-direction means over the 2,304 triangles
  (``losses/trg_code.py``), so at ``lambda_ed = 2`` the edge term weighs a third of theirs.
- ``landmarks``: per-landmark L1 norm on the 68 heatmap landmarks in normalised crop coordinates ``[-1, 1]``
  averaged over the landmarks (Eq. 6); GT = ``crop_to_normalized(apply_transform_2d(A, landmarks_2d), S)`` with
  ``A`` and ``S`` (the crop image's side) read from the network inputs (``CropInput``'s output) that
  ``forward(pred, batch, inputs)`` receives. Needs ``has_landmarks_2d``.

Models without some outputs (the landmark-free baseline: no ``vertices_iters``, no ``heatmap_landmarks``) get 0
for ``head``, ``ed`` and ``landmarks``; their ``cam`` and ``img`` terms pose the GT face with the predicted (R, t)
(``V_t = V*`` in Eq. 4), which keeps a translation loss for a model that predicts no face.

Every term averages over the samples that have its labels (``masked_mean``), so a sample with only 2D
landmarks (300W-LP-like) contributes only to ``landmarks``, and a batch without a label gives that term 0.
Returned: every weighted term (``lambda * L``) and their sum under ``loss``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .. import geometry as G
from ..assets import ARKIT_TOPOLOGY, arkit_face
from .masking import masked_mean

TERMS = ("head", "cam", "img", "rot", "ed", "landmarks")


def unique_edges(triangles) -> Tensor:
    """Unique undirected edges ``(E, 2)`` int64 (sorted pairs, sorted rows) of ``triangles (F, 3)``."""
    tri = np.asarray(triangles, dtype=np.int64)
    pairs = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], 0)
    return torch.as_tensor(np.unique(np.sort(pairs, 1), axis=0))


def iteration_weights(n: int) -> list[float]:
    """``2^(t - n)`` for ``t = 1..n`` (paper: 1/4, 1/2, 1 for three iterations)."""
    return [2.0 ** (t - n) for t in range(1, n + 1)]


def _l1_per_point(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean over points of the per-point L1 norm: ``(B, N, D) -> (B,)``."""
    return (a - b).abs().sum(-1).mean(-1)


def landmark_l1(lm: Tensor, batch: Mapping[str, Any], inputs: Mapping[str, Tensor]) -> Tensor:
    """Per-sample landmark error ``(B,)`` of ``lm (B, 68, 2)`` in the crop's normalised ``[-1, 1]`` frame
    (paper Eq. 6): GT = ``crop_to_normalized(apply_transform_2d(A, landmarks_2d), S)``, S the crop side.
    Shared with the direct-regression baseline's auxiliary landmark term."""
    S = int(inputs["image"].shape[-1])
    gt = G.crop_to_normalized(G.apply_transform_2d(inputs["A"].to(lm), batch["landmarks_2d"].to(lm)), S)
    return _l1_per_point(lm, gt)


# -- term pieces shared with the authors'-code recipe (losses/trg_code.py) ---------------------------------
def vertex_labels(batch: Mapping[str, Any], n: int, like: Tensor, topology: str = ARKIT_TOPOLOGY
                  ) -> tuple[Tensor, Tensor]:
    """GT vertices ``(B, n, 3)`` and the samples ``(B,)`` whose GT has exactly the model's ``n`` vertices (and,
    where named, the model's ``topology``); unlabelled rows are zeroed so no NaN/inf from padding can leak
    through masked terms' gradients."""
    B, dev = like.shape[0], like.device
    V = batch["vertices"].to(like)
    valid = batch["has_vertices"].to(dev).bool()
    if V.shape[1] < n:
        return like.new_zeros(B, n, 3), torch.zeros_like(valid)
    mask = batch.get("vertices_mask")
    if mask is not None:
        mask = mask.to(dev).bool()
        valid = valid & (mask.sum(1) == n) & mask[:, :n].all(1)
    elif V.shape[1] != n:
        valid = torch.zeros_like(valid)
    topo = batch.get("topology")
    if topo is not None:
        valid = valid & torch.tensor([tp in ("", topology) for tp in topo], device=dev)
    V = V[:, :n]
    return torch.where(valid.view(B, 1, 1), V, torch.zeros_like(V)), valid


def project_where(points_cam: Tensor, K: Tensor, valid: Tensor) -> Tensor:
    """``geometry.project_points`` of ``points_cam (B, N, 3)`` with ``K (B, 3, 3)`` where ``valid (B,)``;
    elsewhere a safe point at depth 1 and ``K = I`` (an absent K is stored as zeros: projecting with it
    divides 0 by 0, and NaN * 0 stays NaN in a masked mean and its gradient)."""
    cam = torch.where(valid.view(-1, 1, 1), points_cam, points_cam.new_tensor([0.0, 0.0, 1.0]))
    K = torch.where(valid.view(-1, 1, 1), K, torch.eye(3, dtype=K.dtype, device=K.device))
    return G.project_points(cam, K)


def edge_length_error(V: Tensor, V_gt: Tensor, pairs: Tensor) -> Tensor:
    """``| |V_i - V_j| - |V*_i - V*_j| |`` ``(B, E)`` (metres) for the vertex index ``pairs (E, 2)``."""
    i, j = pairs[:, 0], pairs[:, 1]
    return ((V[:, i] - V[:, j]).norm(dim=-1) - (V_gt[:, i] - V_gt[:, j]).norm(dim=-1)).abs()


class TRGLoss(nn.Module):
    """Args: the lambdas of Eq. 7 (paper: head 20, cam 2, img 0.01, rot 10, ed 2, landmarks 1.25). A lambda of
    0 skips its term's computation (the term is still returned, as 0) -- the ablation recipes."""

    def __init__(self, head: float = 20.0, cam: float = 2.0, img: float = 0.01, rot: float = 10.0,
                 ed: float = 2.0, landmarks: float = 1.25, topology: str = ARKIT_TOPOLOGY):
        super().__init__()
        self.weights = {"head": float(head), "cam": float(cam), "img": float(img), "rot": float(rot),
                        "ed": float(ed), "landmarks": float(landmarks)}
        self.topology = topology
        face = arkit_face()
        self.n_vertices = len(face["mean_vertices"])  # GT face size for models that predict no face
        self.register_buffer("edges", unique_edges(face["triangles"]), persistent=False)

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, pred: Mapping[str, Any], batch: Mapping[str, Any],
                inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted terms and ``loss`` of the network output ``pred`` for the schema ``batch``; ``inputs`` is the
        network's input (``CropInput``'s output: the crop ``A`` and the image whose side is S)."""
        w = self.weights
        R_iters, t_iters = pred["R_iters"], pred["t_iters"]
        geometry = "vertices_iters" in pred
        like = pred["vertices_iters"][-1] if geometry else R_iters[-1]
        dev = like.device
        has = {k: batch[f"has_{k}"].to(dev).bool() for k in ("R", "t", "K", "landmarks_2d")}
        V_gt, has_v = vertex_labels(batch, like.shape[1] if geometry else self.n_vertices, like, self.topology)
        # Without a predicted face, the camera/image terms pose the GT face (module docstring).
        V_iters = pred["vertices_iters"] if geometry else [V_gt] * len(R_iters)
        final = V_iters[-1]
        R_gt, t_gt, K = batch["R"].to(final), batch["t"].to(final), batch["K"].to(final)
        has_pose = has_v & has["R"] & has["t"]
        has_img = has_pose & has["K"]
        zero = like.sum() * 0.0  # keeps the graph for terms without labels
        raw = {k: zero for k in TERMS}

        need_cam = w["cam"] != 0 or w["img"] != 0
        if need_cam:
            cam_gt = G.transform_points(V_gt, R_gt, t_gt)
            img_gt = project_where(cam_gt, K, has_img)  # unlabelled rows: a safe point, masked out anyway
        for weight, V, R, t in zip(iteration_weights(len(V_iters)), V_iters, R_iters, t_iters):
            if w["head"] != 0 and geometry:
                raw["head"] = raw["head"] + weight * masked_mean(_l1_per_point(V, V_gt), has_v)
            if need_cam:
                cam = G.transform_points(V, R, t)
                if w["cam"] != 0:
                    raw["cam"] = raw["cam"] + weight * masked_mean(_l1_per_point(cam, cam_gt), has_pose)
                if w["img"] != 0:
                    img = project_where(cam, K, has_img)
                    raw["img"] = raw["img"] + weight * masked_mean(_l1_per_point(img, img_gt), has_img)
            if w["rot"] != 0:
                rot = torch.linalg.matrix_norm(R - R_gt.to(R))
                raw["rot"] = raw["rot"] + weight * masked_mean(rot, has["R"])
        if w["ed"] != 0 and geometry:
            raw["ed"] = masked_mean(edge_length_error(final, V_gt, self.edges).mean(-1), has_v)
        if w["landmarks"] != 0 and "heatmap_landmarks" in pred:
            raw["landmarks"] = masked_mean(landmark_l1(pred["heatmap_landmarks"], batch, inputs), has["landmarks_2d"])

        terms = {k: w[k] * raw[k] for k in TERMS}
        terms["loss"] = sum(terms.values())
        return terms

