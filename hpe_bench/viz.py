"""Drawing helpers on ``uint8`` RGB images ``(H, W, 3)`` (numpy, OpenCV), and the conventions figure.

Every ``draw_*`` function returns a **new** image and never modifies its input. Grayscale inputs
``(H, W)`` or ``(H, W, 1)`` are expanded to RGB. Colours are RGB tuples (not OpenCV's BGR).

Head axes follow the package conventions (docs/conventions.md): the head frame's
x axis (subject's left) is drawn **red**, y (toward the chin) **green**, z (toward the back of the head,
away from the camera at identity) **blue**. Coordinates use OpenCV's integer pixel centres; lines and
points are drawn with 4 fractional bits so sub-pixel positions are kept.

Entry point: ``python -m hpe_bench.viz conventions docs/img/conventions_axes.png`` renders the
conventions figure (the ARKit face at a few poses with its axes and labels).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import cv2
import numpy as np
import torch

from . import geometry as G

__all__ = ["AXIS_COLORS", "AXIS_NAMES", "draw_axes", "draw_axes_ortho", "draw_landmarks", "draw_box", "draw_text",
           "make_grid", "conventions_figure"]

AXIS_COLORS = ((230, 25, 25), (25, 200, 25), (40, 80, 255))
"""RGB colours of the head x, y, z axes: red, green, blue."""
AXIS_NAMES = ("x: subject's left", "y: chin", "z: back of head")

_SHIFT = 4  # fractional bits for OpenCV drawing: coordinates are multiplied by 16
_SCALE = 1 << _SHIFT


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """A contiguous uint8 ``(H, W, 3)`` **copy** of ``image`` (uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image).copy()


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _fixed(p: np.ndarray) -> tuple[int, int]:
    """Pixel ``(x, y)`` to OpenCV fixed-point integers (``shift = _SHIFT``)."""
    return int(round(float(p[0]) * _SCALE)), int(round(float(p[1]) * _SCALE))


def _line(img: np.ndarray, p: np.ndarray, q: np.ndarray, color, thickness: int) -> None:
    if np.all(np.isfinite(p)) and np.all(np.isfinite(q)):
        cv2.line(img, _fixed(p), _fixed(q), tuple(int(c) for c in color), int(thickness), cv2.LINE_AA, _SHIFT)


def draw_axes(image: np.ndarray, R, t, K, length_m: float = 0.1, thickness: int = 2) -> np.ndarray:
    """Draw the head frame's axes at ``t``: x red, y green, z blue (see module docstring).

    image: uint8 ``(H, W, 3)``; R ``(3, 3)``, t ``(3,)`` metres with ``v_cam = R v_head + t``; K ``(3, 3)``
    (numpy or torch). Each axis is the segment from ``t`` to ``R (length_m e_i) + t``, projected with
    ``geometry.transform_points`` / ``geometry.project_points``. Axes are drawn far-to-near so the nearest
    is on top; an axis with an end at or behind the camera plane (``z <= 1 mm``) is skipped.
    Returns a new image.
    """
    out = _as_rgb(image)
    R, t, K = _f64(R), _f64(t), _f64(K)
    ends = torch.cat([torch.zeros(1, 3, dtype=torch.float64), length_m * torch.eye(3, dtype=torch.float64)])
    cam = G.transform_points(ends, R, t)  # (4, 3): origin, x end, y end, z end
    uv = G.project_points(cam, K).numpy()
    z = cam[:, 2].numpy()
    if z[0] <= 1e-3:
        return out
    for i in sorted(range(3), key=lambda i: -z[i + 1]):  # far to near
        if z[i + 1] > 1e-3:
            _line(out, uv[0], uv[i + 1], AXIS_COLORS[i], thickness)
    return out


def draw_axes_ortho(image: np.ndarray, R, center_xy, size_px: float, thickness: int = 2) -> np.ndarray:
    """Orthographic axes for datasets without intrinsics: axis i ends at ``center_xy + size_px * R[:2, i]``.

    image: uint8 ``(H, W, 3)``; R ``(3, 3)``; center_xy ``(2,)`` pixels. Camera and image y both point down,
    so no sign flip is needed. Colours and draw order as ``draw_axes`` (z of ``R[:, i]`` orders the axes).
    Returns a new image.
    """
    out = _as_rgb(image)
    R = np.asarray(R, dtype=np.float64)
    c = np.asarray(center_xy, dtype=np.float64)
    for i in sorted(range(3), key=lambda i: -R[2, i]):  # far to near
        _line(out, c, c + size_px * R[:2, i], AXIS_COLORS[i], thickness)
    return out


def draw_landmarks(image: np.ndarray, pts, color=(0, 255, 0), radius: float = 2.0,
                   thickness: int = -1) -> np.ndarray:
    """Draw 2D points ``pts (N, 2)`` (or ``(N, >=2)``, extra columns ignored) as circles; ``thickness=-1``
    fills them. Non-finite points are skipped. Returns a new image."""
    out = _as_rgb(image)
    col = tuple(int(c) for c in color)
    for p in np.asarray(pts, dtype=np.float64).reshape(-1, np.shape(pts)[-1])[:, :2]:
        if np.all(np.isfinite(p)):
            cv2.circle(out, _fixed(p), max(1, int(round(radius * _SCALE))), col, int(thickness), cv2.LINE_AA, _SHIFT)
    return out


def draw_box(image: np.ndarray, box, color=(255, 255, 0), thickness: int = 2) -> np.ndarray:
    """Draw a box ``(x0, y0, x1, y1)`` (pixels, the geometry box convention). Returns a new image."""
    out = _as_rgb(image)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    cv2.rectangle(out, _fixed((x0, y0)), _fixed((x1, y1)), tuple(int(c) for c in color), int(thickness),
                  cv2.LINE_AA, _SHIFT)
    return out


def draw_text(image: np.ndarray, text: str, org_xy, color=(255, 255, 255), scale: float = 0.5,
              thickness: int = 1, outline=(0, 0, 0)) -> np.ndarray:
    """Write ``text`` with its baseline starting at ``org_xy`` (pixels), with a dark outline so it stays legible
    on any background (``outline=None`` disables it). Returns a new image."""
    out = _as_rgb(image)
    org = (int(round(org_xy[0])), int(round(org_xy[1])))
    if outline is not None:
        # shifted copies at the same thickness: a thicker stroke would also widen Hershey glyph spacing
        for dx, dy in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
            cv2.putText(out, text, (org[0] + dx, org[1] + dy), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        tuple(int(c) for c in outline), thickness, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color), thickness,
                cv2.LINE_AA)
    return out


def make_grid(images: Sequence[np.ndarray], ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images (uint8, any sizes, gray or RGB) into ``ceil(n / ncols)`` rows of ``ncols`` cells.

    Each cell has the size of the largest image; smaller images sit at the cell's top-left. ``pad`` pixels
    of ``pad_value`` separate the cells and surround the grid. Returns uint8 ``(H, W, 3)``.
    """
    imgs = [_as_rgb(im) for im in images]
    if not imgs:
        raise ValueError("make_grid needs at least one image")
    ncols = max(1, min(int(ncols), len(imgs)))
    nrows = math.ceil(len(imgs) / ncols)
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)
    grid = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, 3), pad_value, np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im
    return grid


# --------------------------------------------------------------------------------------------------------
# Conventions figure (docs/img/conventions_axes.png)
# --------------------------------------------------------------------------------------------------------

_FIG_SIZE = 440
_FIG_DEPTH_M = 0.55
_FIG_FOV_DEG = 40.0
_BG = (236, 236, 236)


def _render_face(R: np.ndarray, t: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    """The mean ARKit face at pose (R, t): the synthetic renderer when available, else a shaded point cloud."""
    try:
        return _render_with_renderer(R, t, K, size)
    except Exception as err:  # renderer missing or its API changed: the figure must still be drawable
        print(f"[viz] synthetic renderer unavailable ({type(err).__name__}: {err}); drawing a point cloud",
              file=sys.stderr)
        return _render_point_cloud(R, t, K, size)


def _render_with_renderer(R: np.ndarray, t: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    import dataclasses

    from .data.synthetic import raster, scene as S

    template = S.sample_scene(0, "test", 0, size)  # only its field layout is reused; all geometry is replaced
    v = S.mesh()["vertices"]
    v_cam = G.transform_points(_f64(v), _f64(R), _f64(t))
    scene = dataclasses.replace(
        template, ypr_deg=G.matrix_to_euler(_f64(R), "trg").numpy(), R=R, t=t, K=K, vertices=v,
        v_cam=v_cam.numpy(), uv=G.project_points(v_cam, _f64(K)).numpy(),
        light_dir=np.array([0.3, -0.4, -1.0]) / np.linalg.norm([0.3, -0.4, -1.0]), light_rgb=np.ones(3),
        ambient=0.35, diffuse=0.65, albedo=np.array([0.85, 0.68, 0.58]), hair=np.array([0.25, 0.18, 0.12]))
    image, mask = raster.render_scene(scene)
    # plain background (the renderer's is random texture); keep the face pixels
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    out = np.empty_like(image)
    out[:] = _BG
    out[mask] = image[mask]
    return out


def _render_point_cloud(R: np.ndarray, t: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    from .assets import arkit_face

    v = arkit_face()["mean_vertices"].astype(np.float64)
    cam = G.transform_points(_f64(v), _f64(R), _f64(t))
    uv = G.project_points(cam, _f64(K)).numpy()
    z = cam[:, 2].numpy()
    out = np.full((size, size, 3), _BG, np.uint8)
    shade = np.clip((z.max() - z) / max(z.max() - z.min(), 1e-9), 0, 1)  # nearer = darker
    for k in np.argsort(-z):  # far to near
        g = int(200 - 150 * shade[k])
        cv2.circle(out, _fixed(uv[k]), 2 * _SCALE, (g, g, g), -1, cv2.LINE_AA, _SHIFT)
    return out


def _label_axes(img: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, length_m: float) -> np.ndarray:
    """Write each axis's name beyond its projected end (or next to the origin when it points at the camera)."""
    ends = torch.cat([torch.zeros(1, 3, dtype=torch.float64), length_m * torch.eye(3, dtype=torch.float64)])
    uv = G.project_points(G.transform_points(ends, _f64(R), _f64(t)), _f64(K)).numpy()
    o = uv[0]
    for i in range(3):
        d = uv[i + 1] - o
        n = np.linalg.norm(d)
        (tw, th), _ = cv2.getTextSize(AXIS_NAMES[i], cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        if n < 12:  # axis seen end-on: two lines above-left of the origin, clear of the other two axes
            note = "(points away from camera)" if R[2, i] > 0 else "(points toward camera)"
            (nw, _), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            img = draw_text(img, note, o + np.array([-nw - 8.0, -8.0]), color=AXIS_COLORS[i], scale=0.4,
                            outline=(255, 255, 255))
            text = AXIS_NAMES[i]
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            pos = o + np.array([-tw - 8.0, -26.0])
        else:
            u = d / n
            pos = uv[i + 1] + 10 * u
            pos = pos + np.array([-tw / 2, th / 2]) + np.array([u[0] * tw / 2, u[1] * th / 2])
            text = AXIS_NAMES[i]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        pos = np.clip(pos, [2, th + 2], [img.shape[1] - tw - 2, img.shape[0] - 4])
        img = draw_text(img, text, pos, color=AXIS_COLORS[i], scale=0.5, thickness=1, outline=(255, 255, 255))
    return img


def _camera_inset(img: np.ndarray) -> np.ndarray:
    """Small legend of the camera frame in the lower-left corner: x right, y down, z into the image."""
    o = np.array([22.0, img.shape[0] - 66.0])
    for d, name in (((30, 0), "x"), ((0, 30), "y")):
        img = img.copy()
        cv2.arrowedLine(img, _fixed(o), _fixed(o + d), (60, 60, 60), 1, cv2.LINE_AA, _SHIFT, 0.25)
        img = draw_text(img, name, o + np.array(d) + (4, 5), color=(60, 60, 60), scale=0.4, outline=None)
    cv2.circle(img, _fixed(o), 4 * _SCALE, (60, 60, 60), 1, cv2.LINE_AA, _SHIFT)  # z: into the image (tail)
    cv2.line(img, _fixed(o - 2.8), _fixed(o + 2.8), (60, 60, 60), 1, cv2.LINE_AA, _SHIFT)
    cv2.line(img, _fixed(o + (-2.8, 2.8)), _fixed(o + (2.8, -2.8)), (60, 60, 60), 1, cv2.LINE_AA, _SHIFT)
    return draw_text(img, "camera: x right, y down, z forward (into image)", (8, img.shape[0] - 8), color=(60, 60, 60),
                     scale=0.4, outline=None)


def conventions_figure(size: int = _FIG_SIZE) -> np.ndarray:
    """The figure of docs/conventions.md: the mean ARKit face at identity and at two other poses, with its
    head axes (x red, y green, z blue) and labels, plus a camera-frame legend. Returns uint8 ``(H, W, 3)``."""
    K = G.intrinsics_from_fov(torch.tensor(_FIG_FOV_DEG, dtype=torch.float64), size, size).numpy()
    t = np.array([0.0, 0.0, _FIG_DEPTH_M])
    poses = [  # (title, (yaw, pitch, roll) under the "opnet" rule)
        ("identity: R = I (nose toward -z)", (0.0, 0.0, 0.0)),
        ("opnet yaw +60, pitch -20 (nose left, down)", (60.0, -20.0, 0.0)),
        ("opnet yaw -35, pitch +25 (looks up)", (-35.0, 25.0, 0.0)),
    ]
    panels = []
    for title, ypr in poses:
        R = G.euler_to_matrix(torch.tensor(ypr, dtype=torch.float64), "opnet").numpy()
        img = _render_face(R, t, K, size)
        img = draw_axes(img, R, t, K, length_m=0.1, thickness=3)
        img = _label_axes(img, R, t, K, 0.1)
        img = draw_text(img, title, (8, 20), color=(20, 20, 20), scale=0.5, outline=None)
        ypr_trg = G.matrix_to_euler(_f64(R), "trg").numpy().round() + 0.0  # + 0.0: no "-0"
        img = draw_text(img, "trg rule: yaw %+.0f pitch %+.0f roll %+.0f" % tuple(ypr_trg), (8, 40),
                        color=(90, 90, 90), scale=0.4, outline=None)
        panels.append(_camera_inset(img))
    return make_grid(panels, ncols=len(panels), pad=4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpe_bench.viz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("conventions", help="render the conventions figure (ARKit face, head axes, labels)")
    p.add_argument("out", help="output PNG path, e.g. docs/img/conventions_axes.png")
    p.add_argument("--size", type=int, default=_FIG_SIZE, help="panel size in pixels")
    args = parser.parse_args(argv)
    if args.cmd == "conventions":
        from pathlib import Path

        fig = conventions_figure(args.size)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.out), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR)):
            raise SystemExit(f"could not write {args.out}")
        print(f"wrote {args.out} ({fig.shape[1]}x{fig.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
