"""Schema labels under a 2D image map, and the intrinsics assumed for an image without ``K`` (torch, batched).

The one implementation of the rules by which every label of a sample follows a warp of its image: the
dataset-side working crop (``data/working_crop.py``, a scale + shift), training augmentation
(``augment/geometric.py``, similarities and reflections) and the model crop (``models/crop.py``, which only needs
``image_intrinsics``) all call these functions. The maths of each rule lives in ``camera.py`` / ``mirror.py``;
this module decides which rule applies to which label (docs/augmentation.md has the table).

Labels come as a batch dict (``hpe_bench.schema.collate``): ``box (B, 4)``, one tensor per present field
``F`` with its availability mask ``has_F (B,)`` (a missing mask means "absent in every sample"), and optionally
``crop_box (B, 4)``, ``vertices_mask (B, N)`` and the ``topology`` list. Absent labels stay as they were.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import Tensor

from .camera import (apply_similarity_3d, apply_transform_2d, det2, fallback_intrinsics, similarity_camera,
                     similarity_pose, similarity_scale, transform_boxes)
from .mirror import landmark_mirror_permutation, mirror_shape_params, mirror_vertices, vertex_mirror_permutation

__all__ = ["image_intrinsics", "transform_labels"]

log = logging.getLogger(__name__)
_warned_topologies: set[str] = set()


def _rows(mask: Tensor, x: Tensor) -> Tensor:
    """``mask (B,)`` viewed to broadcast against ``x (B, ...)``."""
    return mask.view((-1,) + (1,) * (x.dim() - 1))


def image_intrinsics(K: Tensor | None, has_K: Tensor | None, image_size: tuple[int, int],
                     K_fallback: Tensor | None = None, has_K_fallback: Tensor | None = None,
                     batch_size: int | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Intrinsics ``(B, 3, 3)`` of images of ``image_size = (W, H)``: the schema's rule for a sample without ``K``.

    ``K (B, 3, 3)`` where ``has_K (B,)``; else the sample's ``K_fallback (B, 3, 3)`` where ``has_K_fallback (B,)``
    (the fallback of its *original* image, carried through every crop and warp since); else
    ``fallback_intrinsics(W, H)`` of this image (``f = W + H``, principal point ``(W/2, H/2)``). ``None`` for a
    tensor means absent in every sample; ``batch_size``/``dtype``/``device`` are needed only when ``K`` is None
    (default float32, cpu).
    """
    ref = K if K is not None else K_fallback
    B = batch_size if ref is None else ref.shape[0]
    dtype = dtype or (ref.dtype if ref is not None else torch.float32)
    device = device or (ref.device if ref is not None else None)
    if B is None:
        raise ValueError("image_intrinsics: give batch_size when neither K nor K_fallback is given")
    W, H = image_size
    out = fallback_intrinsics(W, H, dtype).to(device).expand(B, 3, 3)
    if K_fallback is not None and has_K_fallback is not None:
        out = torch.where(has_K_fallback.to(device).view(B, 1, 1), K_fallback.to(out), out)
    if K is not None and has_K is not None:
        out = torch.where(has_K.to(device).view(B, 1, 1), K.to(out), out)
    return out


def transform_labels(labels: Mapping[str, Any], S: Tensor, image_size: tuple[int, int]) -> dict[str, Any]:
    """A new label dict with every label moved by the image map ``S (B, 3, 3)`` (a similarity or reflection
    ``x' = s Q x + b``; ``ValueError`` for anything else); ``image_size = (W, H)`` of the image *before* the map.

    - ``box``, ``crop_box``: box of the 4 mapped corners (``transform_boxes``);
    - ``landmarks_2d``: by ``S``; ``landmarks_3d``: xy by ``S``, z times ``s`` (``apply_similarity_3d``);
      ``head_2d``: xy by ``S``, size times ``s``;
    - ``K``: ``S K Q3^T`` (``similarity_camera``); ``R, t``: ``similarity_pose`` with ``Q3 = blockdiag(Q, 1)``;
    - ``K_fallback``: every sample without ``K`` carries its assumed camera (``image_intrinsics``: its own
      ``K_fallback`` or the fallback of this image) moved like ``K``; ``has_K_fallback = ~has_K``;
    - under a reflection (``det Q < 0``) also: the 68 landmarks swap left/right (``IBUG68_MIRROR``), head-frame
      ``vertices -> S v[perm]`` (``vertex_mirror_permutation`` of the sample's ``topology``; a topology without
      one drops ``has_vertices``, warned once), ``shape_params -> mirror_shape_params``.

    Output tensors have ``S``'s dtype and device; masks are ``(B,)`` bool. The input is not modified.
    """
    B, dev = S.shape[0], S.device
    s = similarity_scale(S)  # checks S once; the rules below reuse it
    mirror = det2(S[:, :2, :2]) < 0
    out = dict(labels)

    def has(name: str) -> Tensor:
        mask = labels.get(f"has_{name}")
        return torch.zeros(B, dtype=torch.bool, device=dev) if mask is None else mask.to(dev)

    def put(name: str, new: Tensor, rows: Tensor | None = None) -> None:
        rows = has(name) if rows is None else rows
        out[name] = torch.where(_rows(rows, new), new, labels[name].to(new))

    any_mirror = bool(mirror.any())
    perm68 = landmark_mirror_permutation(dev)

    def swap(x: Tensor) -> Tensor:
        return torch.where(_rows(mirror, x), x[:, perm68], x) if any_mirror else x

    out["box"] = transform_boxes(S, labels["box"].to(S))
    if "crop_box" in labels:
        out["crop_box"] = transform_boxes(S, labels["crop_box"].to(S))
    if "landmarks_2d" in labels:
        put("landmarks_2d", swap(apply_transform_2d(S, labels["landmarks_2d"].to(S))))
    if "landmarks_3d" in labels:
        put("landmarks_3d", swap(apply_similarity_3d(S, labels["landmarks_3d"].to(S), s)))
    if "head_2d" in labels:  # (x, y, size): xy by S, the size scales with s like the z of landmarks_3d
        put("head_2d", apply_similarity_3d(S, labels["head_2d"].to(S)[:, None], s)[:, 0])
    # One camera per sample -- its K, else the one assumed for it (image_intrinsics) -- moved once.
    camera = image_intrinsics(labels.get("K"), labels.get("has_K"), image_size, labels.get("K_fallback"),
                              labels.get("has_K_fallback"), batch_size=B, dtype=S.dtype, device=dev)
    Q3, camera = similarity_camera(S, camera, s)
    if "K" in labels:
        put("K", camera)
    need_fb = ~has("K")
    old_fb = labels["K_fallback"].to(S) if "K_fallback" in labels else torch.zeros_like(camera)
    out["K_fallback"] = torch.where(_rows(need_fb, camera), camera, old_fb)
    out["has_K_fallback"] = need_fb
    if "R" in labels or "t" in labels:
        R = labels["R"].to(S) if "R" in labels else torch.zeros(B, 3, 3, dtype=S.dtype, device=dev)
        t = labels["t"].to(S) if "t" in labels else torch.zeros(B, 3, dtype=S.dtype, device=dev)
        R_new, t_new = similarity_pose(Q3, R, t)
        if "R" in labels:
            put("R", R_new)
        if "t" in labels:
            put("t", t_new)
    if "shape_params" in labels and any_mirror:
        put("shape_params", mirror_shape_params(labels["shape_params"].to(S)), mirror & has("shape_params"))
    if "vertices" in labels and any_mirror and bool((mirror & has("vertices")).any()):
        out["vertices"], out["has_vertices"] = _mirror_dense(labels, mirror & has("vertices"))
    return out


def _mirror_dense(labels: Mapping[str, Any], rows: Tensor) -> tuple[Tensor, Tensor]:
    """Mirrored head-frame ``vertices (B, N, 3)`` of the samples ``rows (B,)`` and the new ``has_vertices (B,)``:
    samples whose topology has no known permutation lose their dense label (warned once per topology)."""
    verts, has_v = labels["vertices"].clone(), labels["has_vertices"].clone().to(rows.device)
    mask = labels.get("vertices_mask")
    topologies = labels.get("topology", [""] * len(rows))
    for topo in sorted({topologies[i] for i in torch.nonzero(rows)[:, 0].tolist()}):
        idx = torch.tensor([i for i in range(len(rows)) if rows[i] and topologies[i] == topo],
                           dtype=torch.long, device=verts.device)
        try:
            perm = torch.from_numpy(vertex_mirror_permutation(topo).copy()).to(verts.device)
        except KeyError as err:
            if topo not in _warned_topologies:
                _warned_topologies.add(topo)
                log.warning("mirror drops dense vertices: %s", err)
            has_v[idx] = False
            continue
        n = len(perm)
        counts = mask[idx].sum(1) if mask is not None else torch.full((len(idx),), verts.shape[1])
        if verts.shape[1] < n or not bool((counts == n).all()):
            raise ValueError(f"topology {topo!r} has {n} vertices but the batch holds {counts.tolist()}")
        verts[idx, :n] = mirror_vertices(verts[idx, :n], perm)
    return verts, has_v
