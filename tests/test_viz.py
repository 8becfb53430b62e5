"""Tests of hpe_bench.viz: axes land where the conventions say, inputs are never modified, grids tile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench import viz

K = np.array([[300.0, 0.0, 99.5], [0.0, 300.0, 79.5], [0.0, 0.0, 1.0]])
T = np.array([0.0, 0.0, 1.0])  # head centre on the optical axis -> pixel (99.5, 79.5)


def _blank(h=160, w=200, value=0):
    return np.full((h, w, 3), value, np.uint8)


def _colour_mask(img: np.ndarray, rgb) -> np.ndarray:
    """Pixels close to a pure axis colour (anti-aliased edges are excluded by the tolerance)."""
    return (np.abs(img.astype(int) - np.array(rgb)).sum(-1) < 40)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0
    return np.array([xs.mean(), ys.mean()])


def test_axes_identity_directions():
    """R = I: x (red) goes right of the origin pixel, y (green) goes down, z (blue) points away (end-on)."""
    img = _blank()
    out = viz.draw_axes(img, np.eye(3), T, K, length_m=0.1, thickness=2)
    origin = np.array([99.5, 79.5])
    red = _centroid(_colour_mask(out, viz.AXIS_COLORS[0]))
    green = _centroid(_colour_mask(out, viz.AXIS_COLORS[1]))
    assert red[0] > origin[0] + 10 and abs(red[1] - origin[1]) < 2
    assert green[1] > origin[1] + 10 and abs(green[0] - origin[0]) < 2
    # x end at u = 99.5 + 300 * 0.1 = 129.5: the red segment stops there
    assert np.nonzero(_colour_mask(out, viz.AXIS_COLORS[0]))[1].max() <= 132
    # the z axis is seen end-on: it covers (almost) nothing
    assert _colour_mask(out, viz.AXIS_COLORS[2]).sum() < 15


def test_axes_yaw_moves_z_to_the_right():
    """Positive yaw (both rules) turns the nose (-z) to image left, so +z (back of head) goes right.
    ("opnet" pitch +30 looks up, so +z also goes down; it keeps z apart from the x axis, which a pure yaw
    projects onto the same image row.)"""
    R = G.euler_to_matrix(torch.tensor([40.0, 30.0, 0.0], dtype=torch.float64), "opnet").numpy()
    out = viz.draw_axes(_blank(), R, T, K)
    blue = _centroid(_colour_mask(out, viz.AXIS_COLORS[2]))
    assert blue[0] > 99.5 + 5 and blue[1] > 79.5 + 3


def test_axes_match_geometry_projection():
    R = G.euler_to_matrix(torch.tensor([25.0, -15.0, 10.0], dtype=torch.float64), "trg").numpy()
    t = np.array([0.03, -0.02, 0.8])
    out = viz.draw_axes(_blank(), R, t, K, length_m=0.1, thickness=1)
    ends = G.project_points(G.transform_points(torch.tensor(0.1 * np.eye(3)), torch.tensor(R), torch.tensor(t)),
                            torch.tensor(K)).numpy()
    for i in range(3):
        ex, ey = np.round(ends[i]).astype(int)
        patch = out[ey - 2:ey + 3, ex - 2:ex + 3].astype(int)
        dist = np.abs(patch - np.array(viz.AXIS_COLORS[i])).sum(-1)
        assert dist.min() < 120, (i, dist.min())  # a pixel of the axis colour near its projected end


def test_axes_accept_torch_and_skip_behind_camera():
    out = viz.draw_axes(_blank(), torch.eye(3), torch.tensor([0.0, 0.0, 1.0]), torch.tensor(K))
    assert out.any()
    behind = viz.draw_axes(_blank(), np.eye(3), np.array([0.0, 0.0, -1.0]), K)
    assert not behind.any()


def test_axes_ortho_directions():
    out = viz.draw_axes_ortho(_blank(), np.eye(3), (100.0, 80.0), 40.0)
    red = _centroid(_colour_mask(out, viz.AXIS_COLORS[0]))
    green = _centroid(_colour_mask(out, viz.AXIS_COLORS[1]))
    assert red[0] > 110 and green[1] > 90
    # a roll of +90 deg about the camera z axis maps head x onto the image's y (down)
    Rz = G.axis_rotation("z", torch.tensor(np.pi / 2, dtype=torch.float64)).numpy()
    out = viz.draw_axes_ortho(_blank(), Rz, (100.0, 80.0), 40.0)
    red = _centroid(_colour_mask(out, viz.AXIS_COLORS[0]))
    assert red[1] > 90 and abs(red[0] - 100) < 2


@pytest.mark.parametrize("fn", [
    lambda im: viz.draw_axes(im, np.eye(3), T, K),
    lambda im: viz.draw_axes_ortho(im, np.eye(3), (50, 50), 30),
    lambda im: viz.draw_landmarks(im, np.array([[10.0, 10.0], [50.5, 60.25]])),
    lambda im: viz.draw_box(im, (10, 10, 80, 60)),
    lambda im: viz.draw_text(im, "hello", (5, 20)),
])
def test_drawing_returns_new_image(fn):
    img = _blank(value=7)
    before = img.copy()
    out = fn(img)
    assert out is not img and not np.shares_memory(out, img)
    np.testing.assert_array_equal(img, before)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out != before).any()


def test_landmarks_and_box_positions():
    out = viz.draw_landmarks(_blank(), np.array([[30.0, 40.0, 5.0]]), color=(255, 0, 0), radius=2)
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - 30) < 0.5 and abs(ys.mean() - 40) < 0.5  # (x, y) order, z ignored
    out = viz.draw_landmarks(_blank(), np.array([[np.nan, 1.0]]))
    assert not out.any()
    out = viz.draw_box(_blank(), (20, 30, 120, 90), color=(0, 0, 255), thickness=1)
    ys, xs = np.nonzero(out[..., 2] > 128)
    assert xs.min() == 20 and xs.max() == 120 and ys.min() == 30 and ys.max() == 90


def test_gray_input_is_expanded():
    out = viz.draw_box(np.zeros((20, 30), np.uint8), (2, 2, 10, 10))
    assert out.shape == (20, 30, 3)
    with pytest.raises(TypeError):
        viz.draw_box(np.zeros((20, 30, 3), np.float32), (2, 2, 10, 10))


def test_make_grid():
    a, b, c = _blank(10, 20, 50), _blank(8, 12, 100), np.full((10, 20), 200, np.uint8)
    g = viz.make_grid([a, b, c], ncols=2, pad=1, pad_value=255)
    assert g.shape == (2 * (10 + 1) + 1, 2 * (20 + 1) + 1, 3)
    np.testing.assert_array_equal(g[1:11, 1:21], a)
    np.testing.assert_array_equal(g[1:9, 22:34], b)
    np.testing.assert_array_equal(g[12:22, 1:21], np.repeat(c[..., None], 3, 2))
    assert (g[12:22, 22:42] == 255).all()  # empty cell
    with pytest.raises(ValueError):
        viz.make_grid([], 2)


def test_conventions_figure_cli(tmp_path):
    out = tmp_path / "fig.png"
    assert viz.main(["conventions", str(out), "--size", "160"]) == 0
    import cv2

    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 3 * 160
