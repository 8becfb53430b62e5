"""Scene sampling and labels of the embedded synthetic 6DoF dataset (no pixels: see ``raster``).

A sample is the ARKit face mesh (``hpe_bench.assets.arkit_face``) with a random identity, pose,
distance, position, intrinsics, lighting, albedo and background. Everything random is drawn from
``np.random.default_rng([seed, split_id, index])``, so sample ``index`` depends only on
``(seed, split, index)`` and generation in any number of processes gives identical bytes.

Sampling (``sample_scene``, this module) is separate from rendering (``raster.render_scene``) so that the
scene distribution can be tested cheaply. All projection/rotation maths goes through ``hpe_bench.geometry``.
Generation samples whole chunks (``sample_scenes``): each scene's random numbers are drawn first from its
own stream (``_draws``), then identity, rotation, intrinsics, placement, projection and labels run as
batched numpy/torch calls over the chunk (per-op torch overhead on one scene's tiny tensors cost ~2 ms per
scene); the result is bit-identical to sampling the scenes one by one (tested). The background/noise
stream of the renderer is seeded by each scene's ``render_seed``, drawn here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# torch (and geometry/assets, which import it) are imported inside the sampling functions only:
# generation workers import this module (``Scene``, ``mesh``) through ``raster`` and must start without
# importing torch (several seconds on a small machine); they get the mesh constants through ``install_mesh``.

GENERATOR_VERSION = 2  # bump whenever the output of a (seed, split, index) changes: invalidates caches
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
POSE_RULE = "trg"  # yaw/pitch/roll ranges below are in geometry's "trg" rule: R = Rz(roll) Rx(pitch) Ry(yaw)
POSE_LIMITS_DEG = (90.0, 60.0, 45.0)  # |yaw|, |pitch|, |roll|, each uniform in [-limit, limit]
DEPTH_RANGE_M = (0.3, 2.0)  # head-centre depth t_z, log-uniform
FOV_X_RANGE_DEG = (40.0, 90.0)  # horizontal field of view, uniform
PRINCIPAL_OFFSET = 0.03  # principal point = image centre + uniform(+-0.03 * image size) per axis
BOX_MARGIN_PX = 2.0  # projected face box must lie in [margin, size - 1 - margin]
SCALE_RANGE = (0.9, 1.1)  # per-axis identity scale
NUM_BUMPS, BUMP_SIGMA_M, BUMP_AMPLITUDE_M = 6, (0.015, 0.04), 0.004  # RBF displacement along normals
NOSE_TIP, LEFT_EYE, RIGHT_EYE, MOUTH_INNER = 30, range(36, 42), range(42, 48), range(60, 68)
_SKIN_DARK, _SKIN_LIGHT = np.array([0.36, 0.23, 0.16]), np.array([0.96, 0.80, 0.70])
_CANDIDATES = 8  # head positions tried per round of the fit-inside-the-image loop
_MAX_ROUNDS = 40


def split_id(split: str) -> int:
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown synthetic split {split!r}; allowed: {sorted(SPLIT_IDS)}")
    return SPLIT_IDS[split]


_MESH: dict[str, np.ndarray] | None = None


def install_mesh(m: dict[str, np.ndarray]) -> None:
    """Use precomputed ``mesh()`` constants (pool initializer: workers never import the torch-based assets)."""
    global _MESH
    _MESH = m


def mesh() -> dict[str, np.ndarray]:
    """Mean ARKit mesh and derived constants (float64): ``vertices (N, 3)``, ``triangles (F, 3)``,
    ``normals (N, 3)`` unit outward vertex normals, ``keypoints (68,)``, per-triangle feature weights
    ``lips (F,)`` and ``brows (F,)`` in [0, 1], ``centroids (F, 3)`` of the mean mesh, ``quads (F/2, 4)``
    (triangle pairs 2k, 2k+1 as one quad).

    Triangle winding: ``cross(v1 - v0, v2 - v0)`` points out of the face (toward -z at identity).
    """
    global _MESH
    if _MESH is not None:
        return _MESH
    from ...assets import arkit_face

    a = arkit_face()
    v = a["mean_vertices"].astype(np.float64)
    tri = a["triangles"].astype(np.int64)
    kp = a["keypoints_68"].astype(np.int64)
    fn = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])  # area-weighted
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, tri[:, k], fn)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True)
    cxy = v[tri].mean(1)[:, :2]  # frontal (orthographic) view of triangle centroids
    lip_poly = (v[kp[48:60], :2] * 1e4).astype(np.float32)
    lips = np.array([cv2.pointPolygonTest(lip_poly, (float(x), float(y)), True) for x, y in cxy * 1e4])
    lips = np.clip(lips / 10.0 + 0.5, 0.0, 1.0)  # soft edge over ~1 mm
    brows = np.full(len(tri), np.inf)
    for lo, hi in ((17, 21), (22, 26)):  # distance to the two brow polylines, frontal view
        for a0, a1 in zip(kp[lo:hi], kp[lo + 1:hi + 1]):
            p, q = v[a0, :2], v[a1, :2]
            s = np.clip(((cxy - p) @ (q - p)) / ((q - p) @ (q - p)), 0, 1)
            brows = np.minimum(brows, np.linalg.norm(cxy - (p + s[:, None] * (q - p)), axis=1))
    brows = np.clip((0.006 - brows) / 0.002, 0.0, 1.0)
    # The mesh stores triangles in edge-sharing pairs (2k, 2k + 1): quads (o, s1, d, s2) in A's winding,
    # o = A's unshared vertex, d = B's. Drawing a flat pair as one polygon halves the fill calls.
    A, B = tri[0::2], tri[1::2]
    a_only = ~(A[:, :, None] == B[:, None, :]).any(2)  # (Q, 3) A's vertex not in B
    b_only = ~(B[:, :, None] == A[:, None, :]).any(2)
    if not (a_only.sum(1) == 1).all() or not (b_only.sum(1) == 1).all():
        raise ValueError("arkit_face triangles are not stored in edge-sharing pairs")
    k = a_only.argmax(1)
    rolled = np.stack([A[np.arange(len(A)), (k + j) % 3] for j in range(3)], 1)  # (o, s1, s2)
    quads = np.stack([rolled[:, 0], rolled[:, 1], B[b_only], rolled[:, 2]], 1)
    _MESH = {"vertices": v, "triangles": tri, "normals": vn, "keypoints": kp, "lips": lips, "brows": brows,
             "centroids": v[tri].mean(1), "quads": quads,
             # derived constants of the batched sampler and the renderer
             "vertices_sq": (v**2).sum(1), "centroids_sq": (v[tri].mean(1) ** 2).sum(1),
             "centroids_t": v[tri].mean(1).T.copy(),
             "tri0": tri[:, 0].copy(), "tri1": tri[:, 1].copy(), "tri2": tri[:, 2].copy(),
             "triangles4": tri[:, [0, 1, 2, 2]], "left_eye": kp[list(LEFT_EYE)], "right_eye": kp[list(RIGHT_EYE)],
             "mouth_inner": kp[list(MOUTH_INNER)]}
    return _MESH


@dataclass(frozen=True)
class Scene:
    """One sampled scene (float64 numpy). ``vertices (N, 3)`` head frame metres (identity-varied);
    ``ypr_deg (3,)`` under ``POSE_RULE``; ``R (3, 3)``, ``t (3,)``, ``K (3, 3)``; ``v_cam (N, 3)`` camera
    frame; ``uv (N, 2)`` projected pixels; lighting ``light_dir (3,)`` (unit, toward the light, camera
    frame), ``light_rgb (3,)``, ``ambient``, ``diffuse``; ``albedo (3,)`` base skin, ``hair (3,)``,
    ``lip_tint (3,)`` in [0, 1]; ``render_seed`` seeds the background/noise stream."""
    split: str
    index: int
    image_size: int
    fov_x_deg: float
    ypr_deg: np.ndarray
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    vertices: np.ndarray
    v_cam: np.ndarray
    uv: np.ndarray
    light_dir: np.ndarray
    light_rgb: np.ndarray
    ambient: float
    diffuse: float
    albedo: np.ndarray
    hair: np.ndarray
    lip_tint: np.ndarray
    render_seed: int


def _draws(seed: int, sid: int, index: int) -> tuple[np.ndarray, int]:
    """All random numbers of scene ``index``: ``(uniforms (_NUM_UNIFORMS,) in [0, 1), render_seed)``, from
    ``np.random.default_rng([seed, split_id, index])`` only (two draws: per-call overhead of numpy's
    Generator dominates at this size). ``_scenes`` maps the uniforms onto the documented ranges."""
    rng = np.random.default_rng([int(seed), sid, int(index)])
    return rng.random(_NUM_UNIFORMS), int(rng.integers(0, 2**63 - 1))


# layout of the per-scene uniforms (offsets into ``_draws``' array)
_U_BUMP, _U_SIGMA, _U_AMP = 0, NUM_BUMPS, 2 * NUM_BUMPS  # bump centres (vertex ids), sigmas, amplitudes
_U_SCALE = 3 * NUM_BUMPS  # 3 per-axis scales
_U_YPR = _U_SCALE + 3  # 3 angles
_U_FOV, _U_PP, _U_DEPTH = _U_YPR + 3, _U_YPR + 4, _U_YPR + 6  # fov, principal point (2), log-depth
_U_LIGHT = _U_DEPTH + 1  # light direction (3), light colour (3), ambient, diffuse
_U_SKIN = _U_LIGHT + 8  # skin mix, skin jitter (3), hair base, hair lightening on/off, amount, lip tint (2)
_U_POS = _U_SKIN + 9  # head-centre candidates (_MAX_ROUNDS, _CANDIDATES, 2)
_NUM_UNIFORMS = _U_POS + _MAX_ROUNDS * _CANDIDATES * 2


def _lerp(u: np.ndarray, lo, hi) -> np.ndarray:
    return lo + u * (np.asarray(hi) - np.asarray(lo))


def _identity(u: np.ndarray) -> np.ndarray:
    """Identity-varied head-frame vertices ``(B, N, 3)`` from uniforms ``u (B, _NUM_UNIFORMS)``: smooth RBF
    bumps along the normals, then a per-axis scale (origin stays at the head centre)."""
    m = mesh()
    v, n = m["vertices"], m["normals"]
    centres = v[np.minimum((u[:, _U_BUMP:_U_SIGMA] * len(v)).astype(np.int64), len(v) - 1)]  # (B, NB, 3)
    sigma = _lerp(u[:, _U_SIGMA:_U_AMP], *BUMP_SIGMA_M)
    amp = _lerp(u[:, _U_AMP:_U_SCALE], -BUMP_AMPLITUDE_M, BUMP_AMPLITUDE_M)
    d2 = m["vertices_sq"][None, :, None] - 2 * v @ centres.transpose(0, 2, 1) + (centres**2).sum(2)[:, None]
    disp = np.einsum("bnk,bk->bn", np.exp(d2 * (-0.5 / sigma**2)[:, None]), amp)  # (B, N)
    return (v + disp[..., None] * n) * _lerp(u[:, None, _U_SCALE:_U_YPR], *SCALE_RANGE)


def _place(u: np.ndarray, V: torch.Tensor, R: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
    """Sample ``t (B, 3)`` so each projected face box lies inside the image with ``BOX_MARGIN_PX``.

    Depth is log-uniform in ``DEPTH_RANGE_M``; the head centre's pixel is drawn uniformly among the
    positions where the on-axis face extents fit, and candidates (``_CANDIDATES`` per round, from the
    scene's own uniforms) are verified with the exact (perspective) projection. When no candidate fits
    the depth grows by 20 % (capped at the range's top). Vectorised over the scenes still searching.
    """
    import torch

    from ... import geometry as G

    lo_m, hi_m = BOX_MARGIN_PX, size - 1 - BOX_MARGIN_PX
    B, dt = len(V), V.dtype
    z = torch.from_numpy(np.exp(_lerp(u[:, _U_DEPTH], *np.log(DEPTH_RANGE_M))))
    cand = torch.from_numpy(u[:, _U_POS:].reshape(B, _MAX_ROUNDS, _CANDIDATES, 2))
    c, K_inv = K[:, :2, 2], torch.linalg.inv(K)
    rotated = G.transform_points(V, R, torch.zeros(B, 3, dtype=dt))  # (B, N, 3); translations added below
    t = torch.zeros(B, 3, dtype=dt)
    todo = torch.arange(B)
    for r in range(_MAX_ROUNDS):
        zs = z[todo]
        on_axis = rotated[todo] + torch.stack([torch.zeros_like(zs), torch.zeros_like(zs), zs], -1)[:, None]
        ext = G.box_from_points(G.project_points(on_axis, K[todo])) - torch.cat([c[todo], c[todo]], -1)
        low, high = lo_m - ext[:, :2], hi_m - ext[:, 2:]
        left = torch.ones(len(todo), dtype=torch.bool)  # rows of ``todo`` not placed yet
        search = torch.nonzero((low < high).all(1))[:, 0]  # rows whose face fits at this depth
        for k in range(_CANDIDATES):  # ~75 % of candidates fit even at the closest depth
            if len(search) == 0:
                break
            rows = todo[search]
            uv = low[search] + cand[rows, r, k] * (high[search] - low[search])
            uv1 = torch.cat([uv, torch.ones(len(rows), 1, dtype=dt)], -1)
            # head centre on the pixel's ray at depth z (K_inv row 3 is (0, 0, 1))
            tc = (K_inv[rows] @ uv1[..., None])[..., 0] * zs[search, None]
            box = G.box_from_points(G.project_points(rotated[rows] + tc[:, None], K[rows]))
            fit = (box[:, :2] >= lo_m).all(1) & (box[:, 2:] <= hi_m).all(1)
            t[rows[fit]] = tc[fit]
            left[search[fit]] = False
            search = search[~fit]
        todo = todo[left]
        if len(todo) == 0:
            return t
        z[todo] = torch.clamp(z[todo] * 1.2, max=DEPTH_RANGE_M[1])
    raise RuntimeError(f"could not fit the face inside a {size}x{size} image; image_size too small?")


def _scenes(seed: int, split: str, indices: list[int], image_size: int) -> tuple[list[Scene], dict[str, np.ndarray]]:
    """Scenes ``indices`` of ``split`` and their stacked float32 labels, all maths batched over the scenes
    (each scene's random numbers come from its own stream, so scene ``i`` depends only on ``(seed, split, i)``)."""
    import torch

    from ... import geometry as G

    sid = split_id(split)
    draws = [_draws(seed, sid, i) for i in indices]
    u = np.stack([d[0] for d in draws])  # (B, _NUM_UNIFORMS)
    f64 = torch.float64
    vertices = _identity(u)
    ypr = (u[:, _U_YPR:_U_FOV] * 2 - 1) * np.array(POSE_LIMITS_DEG)
    R = G.euler_to_matrix(torch.from_numpy(ypr), POSE_RULE).to(f64)
    fov = _lerp(u[:, _U_FOV], *FOV_X_RANGE_DEG)
    pp = (image_size - 1) / 2.0 + (u[:, _U_PP:_U_DEPTH] * 2 - 1) * PRINCIPAL_OFFSET * image_size
    K = G.intrinsics_from_fov(torch.from_numpy(fov), image_size, image_size, torch.from_numpy(pp[:, 0]),
                              torch.from_numpy(pp[:, 1])).to(f64)  # labels are stored float32; maths in float64
    V = torch.from_numpy(vertices)
    t = _place(u, V, R, K, image_size)
    v_cam = G.transform_points(V, R, t)
    uv = G.project_points(v_cam, K)
    labels = _labels(V, R, t, K, uv)
    ul, us = u[:, _U_LIGHT:_U_SKIN], u[:, _U_SKIN:_U_POS]
    light = np.stack([ul[:, 0] * 2 - 1, ul[:, 1] * 2 - 1, -_lerp(ul[:, 2], 0.2, 1.5)], 1)  # mostly from the camera side
    light /= np.linalg.norm(light, axis=1, keepdims=True)
    light_rgb = _lerp(ul[:, 3:6], 0.88, 1.12)
    ambient, diffuse = _lerp(ul[:, 6], 0.25, 0.55), _lerp(ul[:, 7], 0.5, 0.9)
    skin = (_SKIN_DARK + us[:, :1] * (_SKIN_LIGHT - _SKIN_DARK)) * _lerp(us[:, 1:4], 0.93, 1.07)
    hair = (_lerp(us[:, 4:5], 0.05, 0.25) + np.where(us[:, 5:6] < 0.5, 0.0, 0.45) * us[:, 6:7]) * np.array([1.0, 0.8, 0.6])
    lip = np.stack([np.ones(len(u)), _lerp(us[:, 7], 0.55, 0.75), _lerp(us[:, 8], 0.55, 0.8)], 1)
    Rn, tn, Kn, vc, uvn = R.numpy(), t.numpy(), K.numpy(), v_cam.numpy(), uv.numpy()
    skin, hair = np.clip(skin, 0, 1), np.clip(hair, 0, 1)
    scenes = [Scene(
        split=split, index=int(i), image_size=int(image_size), fov_x_deg=float(fov[j]), ypr_deg=ypr[j],
        R=Rn[j], t=tn[j], K=Kn[j], vertices=vertices[j], v_cam=vc[j], uv=uvn[j], light_dir=light[j],
        light_rgb=light_rgb[j], ambient=float(ambient[j]), diffuse=float(diffuse[j]), albedo=skin[j], hair=hair[j],
        lip_tint=lip[j], render_seed=draws[j][1],
    ) for j, i in enumerate(indices)]
    return scenes, labels


def sample_scene(seed: int, split: str, index: int, image_size: int = 256) -> Scene:
    """Sample scene ``index`` of ``split`` (no rendering); depends only on ``(seed, split, index)``."""
    return _scenes(seed, split, [index], image_size)[0][0]


def sample_scenes(seed: int, split: str, start: int, stop: int, image_size: int = 256) -> tuple[list[Scene], dict[str, np.ndarray]]:
    """Scenes ``start..stop-1`` and their stacked float32 labels ``{name: (m, ...)}`` (see ``scene_labels``),
    batched: identical to ``sample_scene``/``scene_labels`` one by one, much faster."""
    return _scenes(seed, split, list(range(int(start), int(stop))), image_size)


def _labels(V: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, uv: torch.Tensor) -> dict[str, np.ndarray]:
    """Batched ``scene_labels`` from float64 ``V (B, N, 3)``, ``R``, ``t``, ``K``, ``uv (B, N, 2)``."""
    from ... import geometry as G

    lm_cam = G.transform_points(V[:, mesh()["keypoints"]], R, t)
    out = {
        "K": K, "R": R, "t": t,
        "landmarks_2d": G.project_points(lm_cam, K),
        "landmarks_3d": G.depth_relative_points(lm_cam, K, t),
        "vertices": V,
        "box": G.box_from_points(uv),
    }
    return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Schema labels (float32): ``K``, ``R``, ``t``, ``landmarks_2d (68, 2)``, ``landmarks_3d (68, 3)``
    (``geometry.depth_relative_points``), ``vertices (N, 3)`` and ``box (4,)`` (tight box of all
    projected vertices, hence it encloses every rendered face pixel)."""
    import torch

    V, R, t, K, uv = (torch.from_numpy(np.asarray(a, np.float64))[None] for a in
                      (scene.vertices, scene.R, scene.t, scene.K, scene.uv))
    return {k: v[0] for k, v in _labels(V, R, t, K, uv).items()}

