"""Frame changes of hpe_bench.geometry.frames against explicit formulas (OpenGL pipeline, 4x4 products, scipy)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hpe_bench import geometry as G

rng = np.random.default_rng(0)


def t64(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def test_flip_is_a_rotation_and_its_own_inverse():
    F = G.flip_yz(torch.zeros(1, dtype=torch.float64))
    assert torch.equal(F @ F, torch.eye(3, dtype=torch.float64)) and float(torch.det(F)) == 1.0
    np.testing.assert_allclose(F.numpy(), Rotation.from_euler("x", 180, degrees=True).as_matrix(), atol=1e-12)


def test_row_vector_pose():
    R, t = Rotation.random(random_state=1).as_matrix(), rng.normal(size=3)
    M = np.eye(4)
    M[:3, :3], M[3, :3] = R.T, t
    v = rng.normal(size=(5, 3))
    rows = np.concatenate([v, np.ones((5, 1))], 1) @ M
    R2, t2 = G.row_vector_pose(t64(M))
    np.testing.assert_allclose((v @ R2.numpy().T + t2.numpy()), rows[:, :3], atol=1e-12)


def test_opengl_to_opencv_keeps_the_physical_point():
    R_gl, t_gl = t64(Rotation.random(4, random_state=2).as_matrix()), t64(rng.normal(size=(4, 3)))
    v_gl = t64(rng.normal(size=(4, 7, 3)))
    R, t = G.opengl_to_opencv_pose(R_gl, t_gl)
    cam_gl = G.transform_points(v_gl, R_gl, t_gl)
    cam_cv = G.transform_points(G.opengl_to_opencv_points(v_gl), R, t)
    np.testing.assert_allclose(cam_cv.numpy(), (cam_gl * t64([1, -1, -1])).numpy(), atol=1e-12)
    np.testing.assert_allclose(torch.det(R).numpy(), 1.0, atol=1e-12)
    # about x unchanged, about y and z reversed
    for axis, sign in (("x", 1), ("y", -1), ("z", -1)):
        R1, _ = G.opengl_to_opencv_pose(t64(Rotation.from_euler(axis, 25, degrees=True).as_matrix()), t64([0, 0, 0]))
        np.testing.assert_allclose(R1.numpy(), Rotation.from_euler(axis, sign * 25, degrees=True).as_matrix(),
                                   atol=1e-12)


def test_intrinsics_reproduce_the_opengl_pipeline():
    W, H = 640, 480
    n, f, l, r, b, top = 0.01, 100.0, -0.012, 0.010, -0.006, 0.008  # off-centre frustum
    P_col = np.array([[2 * n / (r - l), 0, (r + l) / (r - l), 0], [0, 2 * n / (top - b), (top + b) / (top - b), 0],
                      [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, -1, 0]])
    P = P_col.T  # row-vector form, as ARKitFace stores it
    pts_gl = np.stack([rng.uniform(-0.2, 0.2, 20), rng.uniform(-0.2, 0.2, 20), rng.uniform(-2, -0.3, 20)], 1)
    clip = np.concatenate([pts_gl, np.ones((20, 1))], 1) @ P
    ndc = clip[:, :3] / clip[:, 3:]
    uv_gl = np.stack([(ndc[:, 0] + 1) * W / 2, (1 - ndc[:, 1]) * H / 2], 1)
    K = G.opengl_projection_to_intrinsics(t64(P), W, H)
    uv_cv = G.project_points(G.opengl_to_opencv_points(t64(pts_gl)), K)
    np.testing.assert_allclose(uv_cv.numpy(), uv_gl, atol=1e-9)
    assert K[0, 1] == 0 and K[2, 2] == 1


def test_compose_pose_is_the_4x4_product():
    Ro, to = Rotation.random(random_state=3).as_matrix(), rng.normal(size=3)
    Ri, ti = Rotation.random(random_state=4).as_matrix(), rng.normal(size=3)
    Mo, Mi = np.eye(4), np.eye(4)
    Mo[:3, :3], Mo[:3, 3], Mi[:3, :3], Mi[:3, 3] = Ro, to, Ri, ti
    R, t = G.compose_pose(t64(Ro), t64(to), t64(Ri), t64(ti))
    np.testing.assert_allclose(R.numpy(), (Mo @ Mi)[:3, :3], atol=1e-12)
    np.testing.assert_allclose(t.numpy(), (Mo @ Mi)[:3, 3], atol=1e-12)


def test_biwi_template_to_head():
    v = G.biwi_template_to_head(t64([[0, 0, 100], [0, -90, 60], [35, 30, 70]]))  # nose, chin, left eye (mm)
    np.testing.assert_allclose(v.numpy(), [[0, 0, -0.1], [0, 0.09, -0.06], [0.035, -0.03, -0.07]], atol=1e-12)
