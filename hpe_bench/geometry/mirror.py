"""Left/right mirror of labels: landmark and vertex permutations, mirrored head-frame vertices and shape.

A horizontal image flip mirrors the camera x axis; the head is mirrored with it (``v -> S v`` in the head
frame, ``S = diag(-1, 1, 1)``) and every left/right-indexed label swaps sides (docs/conventions.md "Mirror",
docs/augmentation.md). This module owns the index maps:

- ``IBUG68_MIRROR``: the standard iBUG 68-point left/right permutation (tests re-derive it from the BFM mean).
- ``vertex_mirror_permutation(topology)``: for the ARKit 1220-vertex face (no public file) derived from the
  mesh by topology-aware mirror matching (``mirror_permutation_from_quads``), computed once per process.
- ``mirror_shape_params``: the BFM 68 basis is *not* mirror symmetric, so shape parameters are mapped by
  least squares to those of the mirrored landmark shape (``bfm68_mirror_map``).
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IBUG68_MIRROR", "landmark_mirror_permutation", "mirror_permutation_from_quads", "pair_triangles_into_quads",
    "vertex_mirror_permutation", "mirror_vertices", "bfm68_mirror_map", "mirror_shape_params",
]

IBUG68_MIRROR = (
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,  # jaw
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17,  # brows
    27, 28, 29, 30, 35, 34, 33, 32, 31,  # nose bridge (fixed), nostrils
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,  # eyes
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)
"""Index ``i`` of a mirrored 68-point set takes point ``IBUG68_MIRROR[i]`` of the original (an involution)."""

_S = (-1.0, 1.0, 1.0)


def landmark_mirror_permutation(device=None) -> Tensor:
    """``(68,)`` long: ``mirrored = points[..., perm, :]`` after mirroring the coordinates."""
    return torch.tensor(IBUG68_MIRROR, dtype=torch.long, device=device)


def pair_triangles_into_quads(triangles: np.ndarray) -> np.ndarray:
    """Quads ``(F/2, 4)`` (cyclic vertex order) of a mesh stored as edge-sharing triangle pairs (2k, 2k+1).

    ``ValueError`` if triangles 2k and 2k+1 do not share exactly one edge.
    """
    tri = np.asarray(triangles, np.int64)
    if len(tri) % 2:
        raise ValueError("triangle count is odd: not stored in edge-sharing pairs")
    A, B = tri[0::2], tri[1::2]
    a_only = ~(A[:, :, None] == B[:, None, :]).any(2)
    b_only = ~(B[:, :, None] == A[:, None, :]).any(2)
    if not (a_only.sum(1) == 1).all() or not (b_only.sum(1) == 1).all():
        raise ValueError("triangles are not stored in edge-sharing pairs (2k, 2k+1)")
    k = a_only.argmax(1)
    rolled = np.stack([A[np.arange(len(A)), (k + j) % 3] for j in range(3)], 1)  # (a_only, s1, s2)
    return np.stack([rolled[:, 0], rolled[:, 1], B[b_only], rolled[:, 2]], 1)


def _other_two(quad: np.ndarray, u: int, w: int) -> tuple[int, int]:
    """For a cyclic quad containing edge ``u-w``: ``(x, y)``, x the vertex next to w, y the one next to u."""
    q = list(quad)
    iu, iw = q.index(u), q.index(w)
    if (iu + 1) % 4 == iw:
        return q[(iw + 1) % 4], q[(iu - 1) % 4]
    return q[(iw - 1) % 4], q[(iu + 1) % 4]


def mirror_permutation_from_quads(vertices: np.ndarray, quads: np.ndarray, num_seeds: int = 8) -> np.ndarray:
    """Left/right vertex permutation ``(N,)`` of a mirror-symmetric quad mesh: ``perm[i]`` is the vertex at
    the mirror position of vertex ``i`` (``S v[i] ~ v[perm[i]]``).

    Topology first, geometry only to pick the start: a seed quad whose vertices' mirror nearest neighbours
    form a quad fixes the map on 4 vertices; it then propagates across shared edges (the quad across edge
    ``(u, w)`` maps to the quad across ``(perm u, perm w)``, its other two vertices by adjacency), which is
    a combinatorial automorphism of the mesh wherever it is consistent. Of ``num_seeds`` seeds the
    conflict-free, bijective map with the smallest mean mirror residual is kept. ``ValueError`` if none
    exists (the topology is not mirror symmetric).
    """
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, np.float64)
    quads = np.asarray(quads, np.int64)
    n = len(v)
    edge_quads: dict[frozenset, list[int]] = defaultdict(list)
    for i, q in enumerate(quads):
        for k in range(4):
            edge_quads[frozenset((int(q[k]), int(q[(k + 1) % 4])))].append(i)
    if any(len(x) > 2 for x in edge_quads.values()):
        raise ValueError("mesh has non-manifold edges")
    quad_index = {frozenset(q.tolist()): i for i, q in enumerate(quads)}
    mirrored = v * np.array(_S)
    dist, nn = cKDTree(v).query(mirrored)
    seeds = sorted((float(dist[q].sum()), i) for i, q in enumerate(quads)
                   if len(set(nn[q].tolist())) == 4 and frozenset(nn[q].tolist()) in quad_index)
    best, best_res = None, np.inf
    for _, seed in seeds[:num_seeds]:
        perm = -np.ones(n, np.int64)
        perm[quads[seed]] = nn[quads[seed]]
        visited, stack, conflicts = {seed}, [(seed, quad_index[frozenset(nn[quads[seed]].tolist())])], 0
        while stack and not conflicts:
            q, q_img = stack.pop()
            for k in range(4):
                u, w = int(quads[q][k]), int(quads[q][(k + 1) % 4])
                nb = [x for x in edge_quads[frozenset((u, w))] if x != q]
                if not nb:
                    continue
                nb_img = [x for x in edge_quads.get(frozenset((int(perm[u]), int(perm[w]))), []) if x != q_img]
                if not nb_img:
                    conflicts += 1
                    break
                pairs = zip(_other_two(quads[nb[0]], u, w), _other_two(quads[nb_img[0]], int(perm[u]), int(perm[w])))
                for a, b in pairs:
                    if perm[a] < 0:
                        perm[a] = b
                    elif perm[a] != b:
                        conflicts += 1
                if nb[0] not in visited:
                    visited.add(nb[0])
                    stack.append((nb[0], nb_img[0]))
        if conflicts or (perm < 0).any() or len(np.unique(perm)) != n:
            continue
        res = float(np.linalg.norm(mirrored - v[perm], axis=1).mean())
        if res < best_res:
            best, best_res = perm, res
    if best is None:
        raise ValueError("no consistent mirror permutation: the mesh topology is not left/right symmetric")
    return best


@lru_cache(maxsize=None)
def _vertex_permutation_cached(topology: str) -> np.ndarray:
    from ..assets import ARKIT_TOPOLOGY, arkit_face

    if topology != ARKIT_TOPOLOGY:
        raise KeyError(f"no mirror permutation for vertex topology {topology!r}; known: [{ARKIT_TOPOLOGY!r}]")
    a = arkit_face()
    perm = mirror_permutation_from_quads(a["mean_vertices"], pair_triangles_into_quads(a["triangles"]))
    perm.setflags(write=False)
    return perm


def vertex_mirror_permutation(topology: str) -> np.ndarray:
    """``(N,)`` int64 left/right permutation of a named dense topology (derived once per process, ~0.1 s);
    ``KeyError`` for a topology without one."""
    return _vertex_permutation_cached(topology)


def mirror_vertices(vertices: Tensor, perm: Tensor) -> Tensor:
    """Head-frame vertices ``(..., N, 3)`` of the mirrored head: ``S v[perm]`` (``S = diag(-1, 1, 1)``)."""
    return vertices[..., perm, :] * vertices.new_tensor(_S)


@lru_cache(maxsize=None)
def bfm68_mirror_map() -> tuple[np.ndarray, np.ndarray, float]:
    """Affine map of BFM 68 shape parameters under a mirror: ``p' = T p + d`` -> ``(T (50, 50), d (50,), rel)``.

    ``mean + basis p'`` is the least-squares fit of the mirrored, index-swapped shape ``S (mean + basis p)[perm]``
    (the basis is not mirror symmetric: ``rel`` is the relative residual ``|B T - B_mirrored| / |B_mirrored|``
    of the linear part, about 0.23; so mirroring twice does not return exactly the same parameters).
    """
    from ..assets import bfm68

    b = bfm68()
    mean, basis = b["mean"].astype(np.float64), b["basis"].astype(np.float64)
    perm, S = list(IBUG68_MIRROR), np.array(_S)
    B = basis.reshape(-1, basis.shape[-1])
    B_m = (basis * S[None, :, None])[perm].reshape(B.shape)
    pinv = np.linalg.pinv(B)
    T = pinv @ B_m
    d = pinv @ ((mean * S)[perm] - mean).reshape(-1)
    rel = float(np.linalg.norm(B @ T - B_m) / np.linalg.norm(B_m))
    return T, d, rel


def mirror_shape_params(params: Tensor) -> Tensor:
    """Shape parameters ``(..., 50)`` of the mirrored head (``bfm68_mirror_map``)."""
    T, d, _ = bfm68_mirror_map()
    T, d = torch.as_tensor(T).to(params), torch.as_tensor(d).to(params)
    return params @ T.T + d
