"""Scene sampling and OpenCV rasteriser of the embedded synthetic 6DoF dataset.

A sample is the ARKit face mesh (``hpe_bench.assets.arkit_face``) with a random identity, pose,
distance, position, intrinsics, lighting, albedo and background. Everything random is drawn from
``np.random.default_rng([seed, split_id, index])``, so sample ``index`` depends only on
``(seed, split, index)`` and generation in any number of processes gives identical bytes.

Sampling (``sample_scene``, no pixels) is separate from rendering (``render_scene``) so that the scene
distribution can be tested cheaply. All projection/rotation maths goes through ``hpe_bench.geometry``.

Rasteriser: back-face culling, painter's algorithm (far-to-near by triangle centroid depth), one
``cv2.fillConvexPoly`` per visible triangle with 4 fractional bits (``shift``) so vertices keep
sub-pixel positions in the OpenCV integer-pixel-centre convention, flat Lambertian shading per triangle.
The face is drawn on an RGBA canvas whose alpha is the face mask, then composited over a textured
background and lightly blurred/noised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# torch (and geometry/assets, which import it) are imported inside the sampling functions only: the
# rendering half of this module is numpy/cv2, so generation workers start without importing torch
# (several seconds on a small machine); they get the mesh constants through ``install_mesh``.

GENERATOR_VERSION = 1  # bump whenever the output of a (seed, split, index) changes: invalidates caches
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
_SHIFT = 4  # fixed-point fractional bits for cv2 polygon vertices
_MERGE_TOL = 8.0  # max colour difference (0-255 levels) for drawing a triangle pair as one quad
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
             "centroids": v[tri].mean(1), "quads": quads}
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


def _identity(rng: np.random.Generator) -> np.ndarray:
    """Identity-varied head-frame vertices ``(N, 3)``: smooth RBF bumps along the normals, then a
    per-axis scale (origin stays at the head centre)."""
    m = mesh()
    v, n = m["vertices"], m["normals"]
    centres = v[rng.integers(0, len(v), NUM_BUMPS)]
    sigma = rng.uniform(*BUMP_SIGMA_M, NUM_BUMPS)
    amp = rng.uniform(-BUMP_AMPLITUDE_M, BUMP_AMPLITUDE_M, NUM_BUMPS)
    d2 = (v**2).sum(1)[:, None] - 2 * v @ centres.T + (centres**2).sum(1)[None]  # (N, B) squared distances
    disp = np.exp(-d2 / (2 * sigma**2)) @ amp
    return (v + disp[:, None] * n) * rng.uniform(*SCALE_RANGE, 3)


def _place(rng: np.random.Generator, V: torch.Tensor, R: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
    """Sample ``t (3,)`` so the projected face box lies inside the image with ``BOX_MARGIN_PX``.

    Depth is log-uniform in ``DEPTH_RANGE_M``; the head centre's pixel is drawn uniformly among the
    positions where the on-axis face extents fit, and candidates are verified with the exact
    (perspective) projection. When none fits the depth grows by 20 % (capped at the range's top).
    Deterministic: all draws come from ``rng``.
    """
    import torch

    from ... import geometry as G

    lo_m, hi_m = BOX_MARGIN_PX, size - 1 - BOX_MARGIN_PX
    z = math.exp(rng.uniform(math.log(DEPTH_RANGE_M[0]), math.log(DEPTH_RANGE_M[1])))
    c, K_inv = K[:2, 2], torch.linalg.inv(K)
    rotated = G.transform_points(V, R, torch.zeros(3, dtype=V.dtype))  # (N, 3); translations added below
    for _ in range(_MAX_ROUNDS):
        on_axis = rotated + torch.tensor([0.0, 0.0, z], dtype=V.dtype)  # head centre on the optical axis
        ext = G.box_from_points(G.project_points(on_axis, K)) - torch.cat([c, c])  # extents around centre
        low, high = (lo_m - ext[:2]).numpy(), (hi_m - ext[2:]).numpy()
        if (low < high).all():
            for _ in range(_CANDIDATES):  # ~75 % of candidates fit even at the closest depth
                uv1 = torch.tensor([*rng.uniform(low, high), 1.0], dtype=V.dtype)
                t = (K_inv @ uv1) * z  # head centre on the pixel's ray at depth z (K_inv row 3 is (0, 0, 1))
                box = G.box_from_points(G.project_points(rotated + t, K))
                if bool((box[:2] >= lo_m).all() and (box[2:] <= hi_m).all()):
                    return t
        z = min(z * 1.2, DEPTH_RANGE_M[1])
    raise RuntimeError(f"could not fit the face inside a {size}x{size} image; image_size too small?")


def sample_scene(seed: int, split: str, index: int, image_size: int = 256) -> Scene:
    """Sample scene ``index`` of ``split`` (no rendering); depends only on ``(seed, split, index)``."""
    import torch

    from ... import geometry as G

    rng = np.random.default_rng([int(seed), split_id(split), int(index)])
    f64 = torch.float64
    vertices = _identity(rng)
    ypr = rng.uniform(-1.0, 1.0, 3) * np.array(POSE_LIMITS_DEG)
    R = G.euler_to_matrix(torch.from_numpy(ypr), POSE_RULE).to(f64)
    fov = float(rng.uniform(*FOV_X_RANGE_DEG))
    cx, cy = (image_size - 1) / 2.0 + rng.uniform(-1, 1, 2) * PRINCIPAL_OFFSET * image_size
    K = G.intrinsics_from_fov(torch.tensor(fov, dtype=f64), image_size, image_size, torch.tensor(cx), torch.tensor(cy))
    K = K.to(f64)  # labels are stored float32; sampling/projection run in float64
    V = torch.from_numpy(vertices)
    t = _place(rng, V, R, K, image_size)
    v_cam = G.transform_points(V, R, t)
    uv = G.project_points(v_cam, K)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.2, 1.5)])  # mostly from the camera side
    skin = (_SKIN_DARK + rng.random() * (_SKIN_LIGHT - _SKIN_DARK)) * rng.uniform(0.93, 1.07, 3)
    hair = (rng.uniform(0.05, 0.25) + rng.choice([0.0, 0.45]) * rng.random()) * np.array([1.0, 0.8, 0.6])
    return Scene(
        split=split, index=int(index), image_size=int(image_size), fov_x_deg=fov, ypr_deg=ypr,
        R=R.numpy(), t=t.numpy(), K=K.numpy(), vertices=vertices, v_cam=v_cam.numpy(), uv=uv.numpy(),
        light_dir=light / np.linalg.norm(light), light_rgb=rng.uniform(0.88, 1.12, 3),
        ambient=float(rng.uniform(0.25, 0.55)), diffuse=float(rng.uniform(0.5, 0.9)),
        albedo=np.clip(skin, 0, 1), hair=np.clip(hair, 0, 1),
        lip_tint=np.array([1.0, rng.uniform(0.55, 0.75), rng.uniform(0.55, 0.8)]),
        render_seed=int(rng.integers(0, 2**63 - 1)),
    )


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Schema labels (float32): ``K``, ``R``, ``t``, ``landmarks_2d (68, 2)``, ``landmarks_3d (68, 3)``
    (``geometry.depth_relative_points``), ``vertices (N, 3)`` and ``box (4,)`` (tight box of all
    projected vertices, hence it encloses every rendered face pixel)."""
    import torch

    from ... import geometry as G

    kp = mesh()["keypoints"]
    K, R, t = (torch.from_numpy(a) for a in (scene.K, scene.R, scene.t))
    lm_cam = G.transform_points(torch.from_numpy(scene.vertices[kp]), R, t)
    out = {
        "K": K, "R": R, "t": t,
        "landmarks_2d": G.project_points(lm_cam, K),
        "landmarks_3d": G.depth_relative_points(lm_cam, K, t),
        "vertices": torch.from_numpy(scene.vertices),
        "box": G.box_from_points(torch.from_numpy(scene.uv)),
    }
    return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background ``uint8 (size, size, 3)``: two octaves of upsampled random colour noise blended
    with a linear colour gradient, plus a few random shapes (circles, rectangles, lines).

    The smooth part is composed at 64x64 and upsampled (it is low-frequency anyway): full-resolution
    float maths would cost more than the whole face rasterisation."""
    lo = 64
    def octave(g: int) -> np.ndarray:
        return cv2.resize(rng.random((g, g, 3), dtype=np.float32), (lo, lo), interpolation=cv2.INTER_CUBIC)
    coarse = octave(int(rng.integers(2, 6))) * rng.uniform(0.3, 1.0)  # same draw order as one expression
    base = coarse + octave(int(rng.integers(8, 17))) * rng.uniform(0, 0.4)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, lo, dtype=np.float32)
    g = (math.cos(ang) * ramp[None, :] + math.sin(ang) * ramp[:, None])[..., None] / 1.42 + 0.5  # (lo, lo, 1) in [0, 1]
    c0, c1 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    w = np.float32(rng.uniform(0.2, 0.8))
    bg = w * base / max(float(base.max()), 1e-6) + (1 - w) * (c0 + g * (c1 - c0))
    bg = cv2.resize(np.clip(bg * 255.0, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(0, 8))):  # occasional clutter
        col = tuple(int(x) for x in rng.integers(0, 256, 3))
        p = tuple(int(x) for x in rng.integers(0, size, 2))
        q = tuple(int(x) for x in rng.integers(0, size, 2))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.circle(bg, p, int(rng.integers(2, size // 4 + 3)), col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(bg, p, q, col, -1)
        else:
            cv2.line(bg, p, q, col, int(rng.integers(1, 6)), cv2.LINE_AA)
    return bg


def _draw_features(canvas: np.ndarray, scene: Scene) -> None:
    """Eyes (sclera + iris) and mouth interior, drawn before the face so the skin triangles around the
    mesh's eye/mouth holes cover everything but the openings. Only drawn when the region faces the camera."""
    kp, S = mesh()["keypoints"], 1 << _SHIFT
    fwd = scene.R @ np.array([0.0, 0.0, -1.0])  # face's forward direction in the camera frame
    shade = scene.ambient + scene.diffuse * max(0.0, float(fwd @ scene.light_dir))
    sclera, mouth = (0.85, 0.82, 0.8), (0.3, 0.08, 0.08)
    for idx, colour in ((LEFT_EYE, sclera), (RIGHT_EYE, sclera), (MOUTH_INNER, mouth)):
        ids = kp[list(idx)]
        centre = scene.v_cam[ids].mean(0)
        if fwd @ (-centre / np.linalg.norm(centre)) < 0.35:  # seen too obliquely: skip
            continue
        pts = np.round(scene.uv[ids] * S).astype(np.int32)
        rgb = [float(min(255.0, 255 * c * shade)) for c in colour]
        cv2.fillPoly(canvas, [pts], rgb + [255.0], cv2.LINE_8, _SHIFT)
        if idx is not MOUTH_INNER:
            uv = scene.uv[ids]
            r = 0.22 * np.linalg.norm(uv[3] - uv[0])  # iris radius from the eye-corner distance
            iris = [float(255 * c * shade) for c in scene.hair * 0.8] + [255.0]
            cv2.circle(canvas, tuple(np.round(uv.mean(0) * S).astype(int).tolist()), int(r * S), iris, -1,
                       cv2.LINE_8, _SHIFT)


def _polygons(scene: Scene, visible: np.ndarray, rgb: np.ndarray, depth: np.ndarray):
    """Fixed-point polygons and RGBA colours in painter's order (far to near).

    ``visible (F,)`` bool, ``rgb (F, 3)`` flat colours, ``depth (F,)`` triangle sort keys. A triangle pair
    is drawn as one quad when both halves are visible, their colours differ by < ``_MERGE_TOL`` levels
    (invisible after blur/noise) and the projected quad is convex; otherwise triangle by triangle.
    """
    m = mesh()
    tri, quads, uv = m["triangles"], m["quads"], scene.uv
    va, vb = visible[0::2], visible[1::2]
    q = uv[quads]  # (Q, 4, 2)
    e = np.roll(q, -1, axis=1) - q
    turn = e[:, :, 0] * np.roll(e, -1, axis=1)[:, :, 1] - e[:, :, 1] * np.roll(e, -1, axis=1)[:, :, 0]
    convex = (turn > 0).all(1) | (turn < 0).all(1)
    merge = va & vb & convex & (np.abs(rgb[0::2] - rgb[1::2]).max(1) < _MERGE_TOL)
    single = visible & ~np.repeat(merge, 2)
    qi, ti = np.nonzero(merge)[0], np.nonzero(single)[0]
    # one (P, 4, 2) array: single triangles repeat their last corner (a degenerate quad fills the same pixels)
    corners = np.concatenate([q[qi], uv[tri[ti]][:, [0, 1, 2, 2]]])
    keys = np.concatenate([(depth[2 * qi] + depth[2 * qi + 1]) / 2, depth[ti]])
    rgba = np.full((len(keys), 4), 255, np.uint8)  # small Python ints convert fastest to cv2 colours
    rgba[:, :3] = np.rint(np.concatenate([(rgb[2 * qi] + rgb[2 * qi + 1]) / 2, rgb[ti]]))
    order = np.argsort(-keys, kind="stable")
    return list(np.rint(corners[order] * (1 << _SHIFT)).astype(np.int32)), rgba[order].tolist()


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` -> ``(image uint8 (S, S, 3) RGB, mask bool (S, S))``; ``mask`` marks face pixels
    (before the final blur). Deterministic given the scene (its ``render_seed`` drives textures/noise)."""
    rng = np.random.default_rng(scene.render_seed)
    size, m = scene.image_size, mesh()
    tri = m["triangles"]
    p = scene.v_cam[tri]  # (F, 3, 3) camera-frame triangle corners
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    centroid = p.mean(1)
    visible = np.einsum("fi,fi->f", normal, centroid) < 0  # back-face culling: keep camera-facing triangles
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-20
    # per-triangle albedo: base skin with low-frequency blotches, redder lips, hair-coloured brows
    cen = m["centroids"]
    centres = m["vertices"][rng.integers(0, len(m["vertices"]), 4)]
    d2 = (cen**2).sum(1)[:, None] - 2 * cen @ centres.T + (centres**2).sum(1)[None]  # (F, 4)
    albedo = scene.albedo * (1 + np.exp(d2 * (-1 / (2 * 0.03**2))) @ rng.normal(0, 0.05, (4, 3)))
    albedo = albedo * (1 - m["lips"][:, None] * (1 - scene.lip_tint))
    albedo = albedo + 0.85 * m["brows"][:, None] * (scene.hair - albedo)
    shade = scene.ambient + scene.diffuse * np.clip(normal @ scene.light_dir, 0.0, None)  # Lambert, flat
    rgb = np.clip(albedo * shade[:, None] * (scene.light_rgb * 255.0), 0, 255)
    polys, colours = _polygons(scene, visible, rgb, centroid[:, 2])
    canvas = np.zeros((size, size, 4), np.uint8)
    _draw_features(canvas, scene)
    fill = cv2.fillConvexPoly
    for poly, colour in zip(polys, colours):  # the only per-polygon Python loop
        fill(canvas, poly, colour, cv2.LINE_8, _SHIFT)
    mask = canvas[..., 3] > 0
    img = _background(rng, size)
    np.copyto(img, canvas[..., :3], where=mask[..., None])
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))  # soften aliased edges, camera-like
    # uniform pixel noise from one uint8 draw (a float Gaussian draw of S*S*3 values costs several ms)
    amp = int(rng.integers(2, 10))
    img = cv2.add(img, rng.integers(0, 2 * amp, img.shape, dtype=np.uint8))  # saturating uint8 maths
    img = cv2.subtract(img, np.full(img.shape, amp, np.uint8))  # -> uniform noise in [-amp, amp)
    return img, mask


def make_sample(seed: int, split: str, index: int, image_size: int = 256):
    """``(image uint8 (S, S, 3), mask bool (S, S), labels dict)`` of sample ``index``; see ``scene_labels``."""
    scene = sample_scene(seed, split, index, image_size)
    image, mask = render_scene(scene)
    return image, mask, scene_labels(scene)


def worker_init(mesh_constants: dict[str, np.ndarray]) -> None:
    """Pool initializer of generation workers: mesh constants from the parent, single-threaded OpenCV
    (the pool already uses every core)."""
    install_mesh(mesh_constants)
    cv2.setNumThreads(1)


def render_jpeg_chunk(scenes: list[Scene], quality: int) -> list[np.ndarray]:
    """Render and JPEG-encode ``scenes`` -> 1D ``uint8`` byte arrays (the torch-free half of generation)."""
    from ..h5cache import encode_jpeg

    return [encode_jpeg(render_scene(s)[0], quality) for s in scenes]

