"""OpenCV rasteriser of the embedded synthetic 6DoF dataset: renders a ``scene.Scene`` to an RGB image.

Back-face culling, painter's algorithm (far-to-near by triangle centroid depth), one
``cv2.fillConvexPoly`` per visible triangle with 4 fractional bits (``shift``) so vertices keep
sub-pixel positions in the OpenCV integer-pixel-centre convention, flat Lambertian shading per triangle.
The face is drawn on an RGBA canvas whose alpha (1) is the face mask, then composited over a textured
background and lightly blurred/noised. Textures and noise come from the scene's ``render_seed`` stream, so
a render depends only on its scene.

This module is numpy/cv2 only at import time (``scene`` imports torch lazily): generation workers
(``worker_init``, ``render_jpeg_chunk``) start without importing torch.
"""
from __future__ import annotations

import math
from collections import deque
from itertools import repeat

import cv2
import numpy as np

from .scene import Scene, install_mesh, mesh, sample_scene, scene_labels

_SHIFT = 4  # fixed-point fractional bits for cv2 polygon vertices
_MERGE_TOL = 8.0  # max colour difference (0-255 levels) for drawing a triangle pair as one quad


_CUBIC: dict[tuple[int, int], np.ndarray] = {}
_RAMP = np.linspace(-0.5, 0.5, 64, dtype=np.float32)


def _upsample_cubic(a: np.ndarray, lo: int) -> np.ndarray:
    """``cv2.resize(a, (lo, lo), interpolation=cv2.INTER_CUBIC)`` of a small square ``(g, g, 3)`` float32 array,
    as two matrix products with OpenCV's own (separable, linear) cubic weights: OpenCV's generic path
    costs ~0.1 ms per call at these sizes."""
    g = a.shape[0]
    M = _CUBIC.get((g, lo))
    if M is None:  # (lo, g): column j = OpenCV's vertical cubic upsampling of the unit vector e_j
        M = _CUBIC[(g, lo)] = cv2.resize(np.eye(g, dtype=np.float32), (g, lo), interpolation=cv2.INTER_CUBIC)
    return np.matmul(M, (M @ a.reshape(g, -1)).reshape(lo, g, -1))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background ``uint8 (size, size, 3)``: two octaves of upsampled random colour noise blended
    with a linear colour gradient, plus a few random shapes (circles, rectangles, lines).

    The smooth part is composed at 64x64 and upsampled (it is low-frequency anyway): full-resolution
    float maths would cost more than the whole face rasterisation. Scalars come from one ``rng.random``
    call (numpy's per-call overhead is ~5-10 us)."""
    lo = len(_RAMP)
    r = rng.random(12)  # coarse grid, weight, fine grid, weight, gradient angle, 2 colours, blend
    g1, g2 = 2 + int(r[0] * 4), 8 + int(r[2] * 9)  # {2..5}, {8..16}
    base = _upsample_cubic(rng.random((g1, g1, 3), dtype=np.float32), lo) * np.float32(0.3 + 0.7 * r[1])
    base += _upsample_cubic(rng.random((g2, g2, 3), dtype=np.float32), lo) * np.float32(0.4 * r[3])
    ang = 2 * np.pi * r[4]
    g = (math.cos(ang) / 1.42) * _RAMP[None, :] + ((math.sin(ang) / 1.42) * _RAMP[:, None] + 0.5)  # (lo, lo) in [0, 1]
    c0, c1 = r[5:8].astype(np.float32), r[8:11].astype(np.float32)
    w = float(0.2 + 0.6 * r[11])
    bg = base * np.float32(255.0 * w / max(float(base.max()), 1e-6))
    bg += g[..., None] * ((255.0 * (1 - w)) * (c1 - c0)) + (255.0 * (1 - w)) * c0
    bg = cv2.resize(np.clip(bg, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    shapes = rng.random((int(rng.integers(0, 8)), 9))  # occasional clutter: colour, 2 points, kind, size
    for row in shapes:
        col = tuple(int(x) for x in row[:3] * 256)
        p, q = tuple(int(x) for x in row[3:5] * size), tuple(int(x) for x in row[5:7] * size)
        kind = int(row[7] * 3)
        if kind == 0:
            cv2.circle(bg, p, 2 + int(row[8] * (size // 4 + 1)), col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(bg, p, q, col, -1)
        else:
            cv2.line(bg, p, q, col, 1 + int(row[8] * 5), cv2.LINE_AA)
    return bg


def _draw_features(canvas: np.ndarray, scene: Scene) -> None:
    """Eyes (sclera + iris) and mouth interior, drawn before the face so the skin triangles around the
    mesh's eye/mouth holes cover everything but the openings. Only drawn when the region faces the camera.
    Alpha 1 marks face pixels."""
    m, S = mesh(), 1 << _SHIFT
    fwd = -scene.R[:, 2]  # face's forward direction (head -z) in the camera frame
    shade = scene.ambient + scene.diffuse * max(0.0, float(fwd @ scene.light_dir))
    sclera, mouth = (0.85, 0.82, 0.8), (0.3, 0.08, 0.08)
    for ids, colour, eye in ((m["left_eye"], sclera, True), (m["right_eye"], sclera, True),
                             (m["mouth_inner"], mouth, False)):
        centre = scene.v_cam[ids].mean(0)
        if fwd @ centre > -0.35 * math.sqrt(centre @ centre):  # seen too obliquely: skip
            continue
        uv = scene.uv[ids]
        rgb = [float(min(255.0, 255 * c * shade)) for c in colour]
        cv2.fillPoly(canvas, [np.rint(uv * S).astype(np.int32)], rgb + [1.0], cv2.LINE_8, _SHIFT)
        if eye:
            r = 0.22 * math.hypot(*(uv[3] - uv[0]))  # iris radius from the eye-corner distance
            iris = [float(255 * c * shade) for c in scene.hair * 0.8] + [1.0]
            cv2.circle(canvas, tuple(np.rint(uv.mean(0) * S).astype(int).tolist()), int(r * S), iris, -1,
                       cv2.LINE_8, _SHIFT)


def _polygons(scene: Scene, visible: np.ndarray, rgb: np.ndarray, depth: np.ndarray):
    """Fixed-point polygons ``(P, 4, 2) int32`` and RGBA colours (alpha 1, lists) in painter's order (far to near).

    ``visible (F,)`` bool, ``rgb (3, F)`` flat colours (channel-first: numpy reduces over a short last axis
    slowly), ``depth (F,)`` triangle sort keys. A triangle pair is drawn as one quad when both halves are
    visible, their colours differ by < ``_MERGE_TOL`` levels (invisible after blur/noise) and the projected
    quad is convex; otherwise triangle by triangle.
    """
    m = mesh()
    quads, uv = m["quads"], scene.uv
    close = np.abs(rgb[:, 0::2] - rgb[:, 1::2]).max(0) < _MERGE_TOL
    cand = np.flatnonzero(visible[0::2] & visible[1::2] & close)
    qv = quads[cand].T  # (4, C) corner vertex ids
    x, y = uv[:, 0][qv], uv[:, 1][qv]
    ex, ey = x[_NEXT] - x, y[_NEXT] - y
    turn = ex * ey[_NEXT] - ey * ex[_NEXT]
    qi = cand[(turn > 0).all(0) | (turn < 0).all(0)]  # convex quads
    merge = np.zeros(len(quads), bool)
    merge[qi] = True
    ti = np.flatnonzero(visible & ~np.repeat(merge, 2))
    fixed = np.rint(uv * (1 << _SHIFT)).astype(np.int32)  # (N, 2) fixed-point vertices
    # one (P, 4, 2) array: single triangles repeat their last corner (a degenerate quad fills the same pixels)
    corners = np.concatenate([fixed[quads[qi]], fixed[m["triangles4"][ti]]])
    keys = np.concatenate([(depth[2 * qi] + depth[2 * qi + 1]) / 2, depth[ti]])
    rgba = np.ones((len(keys), 4), np.uint8)  # small Python ints convert fastest to cv2 colours
    rgba[:, :3] = np.rint(np.concatenate([(rgb[:, 2 * qi] + rgb[:, 2 * qi + 1]) / 2, rgb[:, ti]], 1)).T
    order = np.argsort(-keys, kind="stable")
    return corners[order], rgba[order].tolist()


_NEXT = [1, 2, 3, 0]
_NOISE_LUT: dict[int, np.ndarray] = {}


def _noise(rng: np.random.Generator, shape: tuple[int, ...], levels: int) -> np.ndarray:
    """Uniform ``uint8`` noise in ``[0, levels)`` of ``shape``: random bytes (drawn as uint64, ~8x faster than
    ``rng.integers(..., dtype=np.uint8)``) mapped by ``b * levels >> 8`` (bins differ by at most one byte value)."""
    lut = _NOISE_LUT.get(levels)
    if lut is None:
        lut = _NOISE_LUT[levels] = ((np.arange(256) * levels) >> 8).astype(np.uint8)
    n = int(np.prod(shape))
    raw = rng.integers(0, 2**64, -(-n // 8), dtype=np.uint64).view(np.uint8)[:n].reshape(shape)
    return cv2.LUT(raw, lut)


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` -> ``(image uint8 (S, S, 3) RGB, mask bool (S, S))``; ``mask`` marks face pixels
    (before the final blur). Deterministic given the scene (its ``render_seed`` drives textures/noise)."""
    rng = np.random.default_rng(scene.render_seed)
    size, m = scene.image_size, mesh()
    r = rng.random(6)  # 4 blotch centres, blur sigma, noise amplitude
    P = scene.v_cam.T  # (3, N) camera-frame vertices
    p0, p1, p2 = P[:, m["tri0"]], P[:, m["tri1"]], P[:, m["tri2"]]  # (3, F) triangle corners
    (ax, ay, az), (bx, by, bz) = p1 - p0, p2 - p0
    normal = np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])  # (3, F), outward
    csum = p0 + p1 + p2  # 3 x centroid
    visible = np.einsum("if,if->f", normal, csum) < 0  # back-face culling: keep camera-facing triangles
    vis = np.flatnonzero(visible)
    # flat Lambert shading and per-triangle albedo of the visible triangles: base skin with low-frequency
    # blotches, redder lips, hair-coloured brows
    nv = normal[:, vis]
    cos = (scene.light_dir @ nv) / (np.sqrt(np.einsum("if,if->f", nv, nv)) + 1e-20)
    shade = scene.ambient + scene.diffuse * np.clip(cos, 0.0, None)
    centres = m["vertices"][np.minimum((r[:4] * len(m["vertices"])).astype(np.int64), len(m["vertices"]) - 1)]
    d2 = m["centroids_sq"][vis] - 2 * centres @ m["centroids_t"][:, vis] + (centres**2).sum(1)[:, None]  # (4, V)
    albedo = scene.albedo[:, None] * (1 + rng.normal(0, 0.05, (4, 3)).T @ np.exp(d2 * (-1 / (2 * 0.03**2))))
    albedo *= 1 - m["lips"][vis] * (1 - scene.lip_tint[:, None])  # (3, V) channel-first from here on
    albedo += 0.85 * m["brows"][vis] * (scene.hair[:, None] - albedo)
    rgb = np.zeros((3, len(visible)))
    rgb[:, vis] = np.clip(albedo * shade * (scene.light_rgb[:, None] * 255.0), 0, 255)
    polys, colours = _polygons(scene, visible, rgb, csum[2])
    canvas = np.zeros((size, size, 4), np.uint8)  # RGB + alpha (1 = face pixel)
    _draw_features(canvas, scene)
    # the only per-polygon loop, run by map() (no Python bytecode per polygon)
    deque(map(cv2.fillConvexPoly, repeat(canvas), polys, colours, repeat(cv2.LINE_8), repeat(_SHIFT)), maxlen=0)
    alpha = cv2.extractChannel(canvas, 3)
    img = _background(rng, size)
    img = cv2.copyTo(cv2.cvtColor(canvas, cv2.COLOR_RGBA2RGB), alpha, img)  # face over the background
    img = cv2.GaussianBlur(img, (0, 0), 0.4 + 0.5 * r[4])  # soften aliased edges, camera-like
    amp = 2 + int(r[5] * 8)  # uniform pixel noise in [-amp, amp), saturating uint8 maths
    img = cv2.add(img, _noise(rng, img.shape, 2 * amp))
    img = cv2.subtract(img, np.full(img.shape, amp, np.uint8))
    return img, alpha.view(bool)


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

