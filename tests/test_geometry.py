"""Tests of hpe_bench.geometry: round trips, scipy cross-checks, hand-derived values, real-label conventions,
projection and crops. Conventions under test are those of docs/conventions.md.

The real-label tests read ``../shared/assets`` (or ``$HPE_BENCH_SHARED``, which may point at the shared root or
at its ``assets`` folder) and skip when it is missing.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hpe_bench import geometry as G
from hpe_bench.geometry import (
    apply_transform_2d, axis_rotation, crop_images, crop_intrinsics, crop_transform, depth_relative_points,
    euler_errors, euler_to_matrix, fallback_intrinsics, geodesic_angle, intrinsics_from_fov, make_intrinsics,
    matrix_to_euler, matrix_to_quat, matrix_to_rotvec, matrix_to_sixd, mirror_rotation, opal23_to_matrix,
    pose_para_to_matrix, project_points, project_to_so3, quat_to_matrix, ray_rotation, rotvec_to_matrix,
    sixd_to_matrix, square_box, transform_points, wrap_degrees,
)

D64 = torch.float64


def _shared_assets() -> Path:
    env = os.environ.get("HPE_BENCH_SHARED")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return root if root.name == "assets" else root / "assets"


ASSETS = _shared_assets()


def _need(name: str) -> Path:
    p = ASSETS / name
    if not p.exists():
        pytest.skip(f"shared asset {p} not available")
    return p


@pytest.fixture(scope="module")
def rotations() -> torch.Tensor:
    """500 random rotations (float64), uniformly distributed."""
    return torch.tensor(Rotation.random(500, random_state=1234).as_matrix(), dtype=D64)


def deg(x) -> torch.Tensor:
    return torch.deg2rad(torch.as_tensor(x, dtype=D64))


# ----------------------------------------------------------------------------------------------------------
# Round trips and scipy cross-checks
# ----------------------------------------------------------------------------------------------------------

def test_quat_round_trip_and_scipy(rotations):
    q = matrix_to_quat(rotations)
    assert torch.all(q[..., 3] >= 0)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q), dtype=D64))
    torch.testing.assert_close(quat_to_matrix(q), rotations, atol=1e-12, rtol=0)
    # scipy's as_quat is (x, y, z, w) too; pick its w >= 0 representative
    qs = torch.tensor(Rotation.from_matrix(rotations.numpy()).as_quat(), dtype=D64)
    qs = torch.where(qs[:, 3:] < 0, -qs, qs)
    torch.testing.assert_close(q, qs, atol=1e-12, rtol=0)
    # q and -q (and scaled copies) are the same rotation
    torch.testing.assert_close(quat_to_matrix(-q), rotations, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_matrix(3.0 * q), rotations, atol=1e-12, rtol=0)
    # scipy's from_quat reads the same order
    torch.testing.assert_close(quat_to_matrix(qs), torch.tensor(Rotation.from_quat(qs.numpy()).as_matrix()),
                               atol=1e-12, rtol=0)


def test_quat_at_half_turn():
    """Rotations by pi (w = 0) still round trip."""
    axes = torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 1.0], [1.0, -2.0, 0.5]], dtype=D64)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    R = rotvec_to_matrix(math.pi * axes)
    torch.testing.assert_close(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12, rtol=0)


def test_sixd_round_trip(rotations):
    x = matrix_to_sixd(rotations)
    assert x.shape == (len(rotations), 6)
    # first column, then second column
    torch.testing.assert_close(x[:, :3], rotations[:, :, 0])
    torch.testing.assert_close(x[:, 3:], rotations[:, :, 1])
    torch.testing.assert_close(sixd_to_matrix(x), rotations, atol=1e-12, rtol=0)


def _gram_schmidt_ref(x: np.ndarray) -> np.ndarray:
    a1, a2 = x[:3], x[3:]
    b1 = a1 / np.linalg.norm(a1)
    b2 = a2 - b1.dot(a2) * b1
    b2 = b2 / np.linalg.norm(b2)
    return np.stack([b1, b2, np.cross(b1, b2)], -1)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_sixd_gram_schmidt_batch_sizes(batch):
    """Non-orthonormal inputs; batch size 3 is where TRG's ``torch.cross`` without ``dim`` goes wrong."""
    x = torch.randn(batch, 6, generator=torch.Generator().manual_seed(batch), dtype=D64) * 2.0
    R = sixd_to_matrix(x)
    ref = torch.tensor(np.stack([_gram_schmidt_ref(v) for v in x.numpy()]))
    torch.testing.assert_close(R, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(batch, dtype=D64))
    # the buggy variant really differs at batch 3 (keeps this test honest)
    if batch == 3:
        b1, b2 = R[..., 0], R[..., 1]
        wrong = torch.cross(b1, b2, dim=0)  # what dim=None picks for a (3, 3) batch: the batch dimension
        assert not torch.allclose(wrong, R[..., 2])


def test_rotvec_round_trip_and_scipy(rotations):
    v = matrix_to_rotvec(rotations)
    vs = torch.tensor(Rotation.from_matrix(rotations.numpy()).as_rotvec(), dtype=D64)
    torch.testing.assert_close(v, vs, atol=1e-10, rtol=0)
    assert torch.all(v.norm(dim=-1) <= math.pi + 1e-12)
    torch.testing.assert_close(rotvec_to_matrix(v), rotations, atol=1e-12, rtol=0)
    torch.testing.assert_close(rotvec_to_matrix(vs), torch.tensor(Rotation.from_rotvec(vs.numpy()).as_matrix()),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-6, 1e-3, 1.0, math.pi - 1e-6])
def test_rotvec_small_and_large_angles(angle):
    axis = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
    v = (angle * axis / axis.norm())[None]
    R = rotvec_to_matrix(v)
    torch.testing.assert_close(R, torch.tensor(Rotation.from_rotvec(v.numpy()).as_matrix()), atol=1e-13, rtol=0)
    torch.testing.assert_close(matrix_to_rotvec(R), v, atol=1e-9, rtol=0)


@pytest.mark.parametrize("rule,seq", [("opnet", "XYZ"), ("trg", "yxz")])
def test_euler_round_trip_and_scipy(rotations, rule, seq):
    ypr = matrix_to_euler(rotations, rule)
    torch.testing.assert_close(euler_to_matrix(ypr, rule), rotations, atol=1e-10, rtol=0)
    e = torch.tensor(Rotation.from_matrix(rotations.numpy()).as_euler(seq, degrees=True), dtype=D64)
    if rule == "opnet":  # scipy (a, b, c) with R = Rx(a) Ry(b) Rz(c); yaw = b, pitch = -a, roll = c
        expect = torch.stack([e[:, 1], -e[:, 0], e[:, 2]], -1)
    else:  # scipy 'yxz' returns (yaw, pitch, roll) directly
        expect = e
    # compare modulo 360 (both sides may sit on the +-180 seam)
    torch.testing.assert_close(wrap_degrees(ypr - expect), torch.zeros_like(ypr), atol=1e-8, rtol=0)
    # and the composition the docstrings promise
    y, p, r = deg(ypr).unbind(-1)
    if rule == "opnet":
        comp = axis_rotation("x", -p) @ axis_rotation("y", y) @ axis_rotation("z", r)
    else:
        comp = axis_rotation("z", r) @ axis_rotation("x", p) @ axis_rotation("y", y)
    torch.testing.assert_close(comp, rotations, atol=1e-10, rtol=0)


def test_geodesic_against_scipy(rotations):
    R1, R2 = rotations[:250], rotations[250:]
    g = geodesic_angle(R1, R2)
    ref = (Rotation.from_matrix(R1.numpy()).inv() * Rotation.from_matrix(R2.numpy())).magnitude()
    torch.testing.assert_close(g, torch.tensor(ref), atol=1e-10, rtol=0)
    torch.testing.assert_close(geodesic_angle(R2, R1), g, atol=1e-12, rtol=0)  # symmetric


@pytest.mark.parametrize("delta", [1e-6, 1e-8])
def test_geodesic_accurate_near_zero(rotations, delta):
    axis = torch.tensor([0.3, -0.4, 0.866], dtype=D64)
    axis = axis / axis.norm()
    R2 = rotations[:20] @ rotvec_to_matrix(delta * axis)
    g = geodesic_angle(rotations[:20], R2)
    torch.testing.assert_close(g, torch.full_like(g, delta), rtol=1e-5, atol=0)
    # arccos((tr - 1) / 2) cannot resolve this: it is why the code uses atan2
    naive = torch.arccos(((rotations[:20].transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2)
    if delta == 1e-8:  # (naive is 0, ~1.5e-8 or NaN here, depending on rounding)
        assert not torch.allclose(naive, torch.full_like(naive, delta), rtol=1e-3, atol=0)


def test_geodesic_accurate_near_pi(rotations):
    axis = torch.tensor([1.0, 2.0, -0.5], dtype=D64)
    axis = axis / axis.norm()
    for eps in (1e-3, 1e-6, 0.0):
        R2 = rotations[:20] @ rotvec_to_matrix((math.pi - eps) * axis)
        g = geodesic_angle(rotations[:20], R2)
        torch.testing.assert_close(g, torch.full_like(g, math.pi - eps), atol=1e-9, rtol=0)


def test_project_to_so3(rotations):
    noisy = rotations[:10] + 1e-3 * torch.randn(10, 3, 3, generator=torch.Generator().manual_seed(0), dtype=D64)
    R = project_to_so3(noisy)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=D64).expand(10, 3, 3), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(10, dtype=D64))
    assert geodesic_angle(R, rotations[:10]).max() < 1e-2
    torch.testing.assert_close(project_to_so3(rotations[:10]), rotations[:10], atol=1e-12, rtol=0)
    # a reflection is turned into a proper rotation
    assert torch.linalg.det(project_to_so3(torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=D64)))) > 0


# ----------------------------------------------------------------------------------------------------------
# Known values derived by hand
# ----------------------------------------------------------------------------------------------------------

def test_axis_rotation_right_handed():
    ex, ey, ez = torch.eye(3, dtype=D64)
    q = deg(90.0)
    # right-handed: z maps x to y, x maps y to z, y maps z to x (cyclic)
    torch.testing.assert_close(axis_rotation("z", q) @ ex, ey, atol=1e-15, rtol=0)
    torch.testing.assert_close(axis_rotation("x", q) @ ey, ez, atol=1e-15, rtol=0)
    torch.testing.assert_close(axis_rotation("y", q) @ ez, ex, atol=1e-15, rtol=0)
    for a in "xyz":
        torch.testing.assert_close(axis_rotation(a, deg(37.0)),
                                   torch.tensor(Rotation.from_euler(a, 37.0, degrees=True).as_matrix()))
    with pytest.raises(ValueError):
        axis_rotation("w", q)


def test_quaternion_about_z():
    """(0, 0, sin(t/2), cos(t/2)) is a rotation of t about z, i.e. real part last."""
    for t in (0.3, 1.2, -2.5):
        q = torch.tensor([0.0, 0.0, math.sin(t / 2), math.cos(t / 2)], dtype=D64)
        torch.testing.assert_close(quat_to_matrix(q), axis_rotation("z", torch.tensor(t, dtype=D64)))
        torch.testing.assert_close(geodesic_angle(quat_to_matrix(q), torch.eye(3, dtype=D64)),
                                   torch.tensor(abs(t), dtype=D64))


def test_yaw_about_camera_y_axis():
    """R = Ry(t) (rotation about the camera's y axis, which points down):

    "opnet": R = Rx(-pitch) Ry(yaw) Rz(roll) with pitch = roll = 0 gives yaw = +t.
    "trg":   R = Rz(roll) Rx(pitch) Ry(yaw) with pitch = roll = 0 gives yaw = +t.
    Both: the nose (head -z) goes to Ry(t) (0, 0, -1) = (-sin t, 0, -cos t), toward image left for t > 0.
    """
    for t in (10.0, 45.0, -70.0):
        R = axis_rotation("y", deg(t))
        for rule in ("opnet", "trg"):
            torch.testing.assert_close(matrix_to_euler(R, rule), torch.tensor([t, 0.0, 0.0], dtype=D64),
                                       atol=1e-10, rtol=0)
        nose = R @ torch.tensor([0.0, 0.0, -1.0], dtype=D64)
        assert (nose[0] < 0) == (t > 0)


def test_pitch_and_roll_signs():
    """Hand-derived signs: "opnet" pitch > 0 looks up (nose to -y), "trg" pitch > 0 looks down;
    roll > 0 (both rules) turns the chin (+y) toward -x, i.e. the face turns clockwise on screen (y down)."""
    nose = torch.tensor([0.0, 0.0, -1.0], dtype=D64)
    chin = torch.tensor([0.0, 1.0, 0.0], dtype=D64)
    up = euler_to_matrix(torch.tensor([0.0, 20.0, 0.0], dtype=D64), "opnet") @ nose
    down = euler_to_matrix(torch.tensor([0.0, 20.0, 0.0], dtype=D64), "trg") @ nose
    assert up[1] < 0 and down[1] > 0
    for rule in ("opnet", "trg"):
        c = euler_to_matrix(torch.tensor([0.0, 0.0, 20.0], dtype=D64), rule) @ chin
        assert c[0] < 0


def test_pose_para_known_value():
    pitch, yaw, roll = deg(10.0), deg(20.0), deg(30.0)
    R = pose_para_to_matrix(pitch, yaw, roll)
    ref = Rotation.from_euler("XYZ", [-10.0, 20.0, 30.0], degrees=True).as_matrix()
    torch.testing.assert_close(R, torch.tensor(ref), atol=1e-14, rtol=0)
    torch.testing.assert_close(matrix_to_euler(R, "opnet"), torch.tensor([20.0, 10.0, 30.0], dtype=D64),
                               atol=1e-10, rtol=0)
    # batched
    Rb = pose_para_to_matrix(torch.stack([pitch, -pitch]), torch.stack([yaw, yaw]), torch.stack([roll, roll]))
    assert Rb.shape == (2, 3, 3)
    torch.testing.assert_close(Rb[0], R)


def test_opal23_to_matrix_is_opnet_with_yaw_flipped():
    ypr = torch.tensor([[20.0, 10.0, 30.0], [-60.0, -5.0, 2.0]], dtype=D64)
    R = opal23_to_matrix(ypr)
    torch.testing.assert_close(matrix_to_euler(R, "opnet"), ypr * torch.tensor([-1.0, 1.0, 1.0], dtype=D64),
                               atol=1e-10, rtol=0)


def test_euler_errors_wrapping():
    a = euler_to_matrix(torch.tensor([179.0, 0.0, 0.0], dtype=D64), "opnet")
    b = euler_to_matrix(torch.tensor([-179.0, 0.0, 0.0], dtype=D64), "trg")
    # 2 degrees apart; "trg" reports the plain difference (358), "opnet" wraps
    e_trg = euler_errors(a, b, "trg")
    e_op = euler_errors(a, b, "opnet")
    assert e_trg[0].item() == pytest.approx(358.0, abs=1e-8)
    torch.testing.assert_close(geodesic_angle(a, b), deg(2.0))
    assert torch.all(e_op <= 180.0)
    R1 = euler_to_matrix(torch.tensor([10.0, 5.0, -3.0], dtype=D64), "opnet")
    R2 = euler_to_matrix(torch.tensor([14.0, 3.0, -3.5], dtype=D64), "opnet")
    torch.testing.assert_close(euler_errors(R1, R2, "opnet"), torch.tensor([4.0, 2.0, 0.5], dtype=D64))
    with pytest.raises(ValueError):
        matrix_to_euler(R1, "xyz")


def test_mirror_rotation(rotations):
    M = mirror_rotation(rotations)
    torch.testing.assert_close(mirror_rotation(M), rotations, atol=1e-15, rtol=0)
    torch.testing.assert_close(torch.linalg.det(M), torch.ones(len(M), dtype=D64))
    # OpNet's quaternion rule (qx, qy, qz, qw) -> (qx, -qy, -qz, qw) is the same map
    q = matrix_to_quat(rotations) * torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=D64)
    torch.testing.assert_close(quat_to_matrix(q), M, atol=1e-12, rtol=0)
    # a mirror flips yaw and roll and keeps pitch (both rules): S Rx S = Rx, S Ry(b) S = Ry(-b), S Rz(c) S = Rz(-c)
    ypr = torch.tensor([[25.0, -12.0, 8.0], [-60.0, 30.0, -15.0]], dtype=D64)
    for rule in ("opnet", "trg"):
        got = matrix_to_euler(mirror_rotation(euler_to_matrix(ypr, rule)), rule)
        torch.testing.assert_close(got, ypr * torch.tensor([-1.0, 1.0, -1.0], dtype=D64), atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Real labels: the conventions agree with AFLW2000-3D data
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aflw2kmini():
    h5py = pytest.importorskip("h5py")
    path = _need("aflw2kmini.h5")
    bfm = np.load(_need("bfm68.npz"))
    with h5py.File(path, "r") as f:
        data = {k: f[k][:].astype(np.float64) for k in ("quats", "coords", "pt3d_68", "shapeparams")}
    data["local"] = bfm["mean"][None] + np.einsum("kdj,nj->nkd", bfm["basis"], data["shapeparams"])
    return data


def _opnet_points(R: np.ndarray, d: dict) -> np.ndarray:
    """OpNet's landmark model: R(q) (mean + basis s) * size + (x, y, 0)."""
    c = d["coords"]
    offset = np.concatenate([c[:, None, :2], np.zeros((len(c), 1, 1))], -1)
    return np.einsum("nij,nkj->nki", R, d["local"]) * c[:, None, 2:3] + offset


def _xy_error(R: np.ndarray, d: dict) -> np.ndarray:
    """Mean 2D distance to the stored pt3d_68 per sample, in units of the head radius (coords[:, 2])."""
    pt = _opnet_points(R, d)
    return np.linalg.norm(pt[..., :2] - d["pt3d_68"][..., :2], axis=-1).mean(-1) / d["coords"][:, 2]


def test_aflw2kmini_quaternion_convention(aflw2kmini):
    q = torch.tensor(aflw2kmini["quats"])
    R = quat_to_matrix(q).numpy()
    err = _xy_error(R, aflw2kmini)
    # the asset notes say 0.2-0.8 % per coordinate; as a mean 2D distance this is 0.2-1.3 %
    assert err.max() < 0.02, err
    assert np.median(err) < 0.01, err
    wrong = {
        "conjugate": R.transpose(0, 2, 1),
        "wxyz order": quat_to_matrix(q[:, [1, 2, 3, 0]]).numpy(),
        "mirrored": mirror_rotation(torch.tensor(R)).numpy(),
    }
    for name, Rw in wrong.items():
        e = _xy_error(Rw, aflw2kmini)
        assert np.median(e) > 10 * np.median(err), (name, np.median(e))


def _read_opal23(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, angles (N, 3) in the file's column order yaw, pitch, roll [deg], landmarks (N, 68, 2))."""
    names, ang, pts = [], [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            f = line.strip().split(";")  # path; image; yaw; pitch; roll; 68 x (x, y)
            names.append(f[1])
            ang.append([float(v) for v in f[2:5]])
            pts.append([float(v) for v in f[5:5 + 136]])
    return names, np.asarray(ang), np.asarray(pts).reshape(-1, 68, 2)


@pytest.fixture(scope="module")
def opal23_aflw():
    names, ang, pts = _read_opal23(_need("protocols/opal23_aflw2000_ann.txt"))
    mean = np.load(_need("bfm68.npz"))["mean"]
    return names, ang, pts, mean


def _ortho_fit_residual(R: np.ndarray, mean: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Fit only scale + 2D offset of the orthographic projection of ``R mean`` to ``pts``; mean residual / sqrt(wh)."""
    proj = np.einsum("nij,kj->nki", R, mean)[..., :2]
    pc = proj - proj.mean(1, keepdims=True)
    qc = pts - pts.mean(1, keepdims=True)
    s = (pc * qc).sum((1, 2)) / (pc * pc).sum((1, 2))
    res = np.linalg.norm(qc - s[:, None, None] * pc, axis=-1).mean(1)
    wh = pts.max(1) - pts.min(1)
    return res / np.sqrt(wh[:, 0] * wh[:, 1])


def test_opal23_aflw2000_protocol_count(opal23_aflw):
    names, ang, _, _ = opal23_aflw
    assert len(names) == 2000
    assert int((np.abs(ang) <= 99).all(1).sum()) == 1969


def test_opal23_aflw2000_landmarks_fit_rotation(opal23_aflw):
    """The file's 2D landmarks agree with the rotated BFM mean shape only under ``opal23_to_matrix``
    (yaw sign flipped w.r.t. the "opnet" rule / ``pose_para_to_matrix``)."""
    _, ang, pts, mean = opal23_aflw
    keep = (np.abs(ang) <= 99).all(1)
    ypr, pts = torch.tensor(ang[keep]), pts[keep]  # columns: yaw, pitch, roll (degrees)

    def residual(yaw_sign=1.0, pitch_sign=1.0, roll_sign=1.0) -> float:
        signed = ypr * torch.tensor([yaw_sign, pitch_sign, roll_sign], dtype=D64)
        return float(np.median(_ortho_fit_residual(opal23_to_matrix(signed).numpy(), mean, pts)))

    good = residual()
    assert good < 0.035, good  # measured 0.021
    # the naive reading pose_para_to_matrix(pitch, yaw, roll) is the yaw-flipped one
    naive = pose_para_to_matrix(*torch.deg2rad(ypr[:, [1, 0, 2]]).unbind(-1)).numpy()
    bad = {
        "naive Pose_Para reading (yaw flipped)": float(np.median(_ortho_fit_residual(naive, mean, pts))),
        "pitch flipped": residual(pitch_sign=-1.0),
        "roll flipped": residual(roll_sign=-1.0),
    }
    for name, b in bad.items():
        assert b > 2.5 * good, (name, b, good)
    # large poses separate the conventions even more clearly
    big = np.abs(ang[keep][:, 0]) > 30
    r_good = _ortho_fit_residual(opal23_to_matrix(ypr[big]).numpy(), mean, pts[big])
    r_bad = _ortho_fit_residual(naive[big], mean, pts[big])
    assert np.median(r_bad) > 5 * np.median(r_good)


def test_opal23_matches_opnet_quaternions_exactly(aflw2kmini, opal23_aflw):
    """The 16 aflw2kmini samples are AFLW2000-3D images: find their opal23 rows by landmarks, then compare angles."""
    _, ang, pts, _ = opal23_aflw
    xy = aflw2kmini["pt3d_68"][..., :2]
    dist = np.linalg.norm(pts[None] - xy[:, None], axis=-1).mean(-1)  # (16, 2000)
    rows = dist.argmin(1)
    assert dist.min(1).max() < 1e-3  # the same images, same landmarks
    R = quat_to_matrix(torch.tensor(aflw2kmini["quats"]))
    ypr_opnet = matrix_to_euler(R, "opnet")
    torch.testing.assert_close(ypr_opnet, torch.tensor(ang[rows]) * torch.tensor([-1.0, 1.0, 1.0], dtype=D64),
                               atol=1e-3, rtol=0)
    assert geodesic_angle(opal23_to_matrix(torch.tensor(ang[rows])), R).max() < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Projection, intrinsics, boxes and crops
# ----------------------------------------------------------------------------------------------------------

K0 = make_intrinsics(*torch.tensor([500.0, 520.0, 319.5, 239.5], dtype=D64))


def test_project_optical_axis_and_pinhole():
    p = project_points(torch.tensor([[0.0, 0.0, 2.0], [0.1, -0.2, 2.0]], dtype=D64), K0)
    torch.testing.assert_close(p[0], torch.tensor([319.5, 239.5], dtype=D64))
    torch.testing.assert_close(p[1], torch.tensor([319.5 + 500 * 0.05, 239.5 - 520 * 0.1], dtype=D64))


def test_transform_points_matches_definition(rotations):
    pts = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(3), dtype=D64)
    R, t = rotations[:4], torch.tensor([[0.0, 0.1, 1.0]], dtype=D64).expand(4, 3)
    expect = torch.einsum("bij,bnj->bni", R, pts) + t[:, None]
    torch.testing.assert_close(transform_points(pts, R, t), expect)


def test_intrinsics_from_fov_edges():
    W, H = 640, 480
    K = intrinsics_from_fov(torch.tensor(60.0, dtype=D64), W, H)
    assert K.dtype == D64
    tan = math.tan(math.radians(30.0))
    pts = torch.tensor([[tan, 0.0, 1.0], [-tan, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=D64)
    uv = project_points(pts, K)
    torch.testing.assert_close(uv[:, 0], torch.tensor([W - 0.5, -0.5, (W - 1) / 2], dtype=D64))
    torch.testing.assert_close(uv[2, 1], torch.tensor((H - 1) / 2, dtype=D64))
    torch.testing.assert_close(K[0, 0], K[1, 1])
    assert intrinsics_from_fov(60.0, W, H).dtype == torch.float32
    assert intrinsics_from_fov(torch.tensor([60.0, 90.0]), W, H).shape == (2, 3, 3)


def test_fallback_intrinsics():
    K = fallback_intrinsics(640, 480, dtype=D64)
    torch.testing.assert_close(K, torch.tensor([[1120.0, 0, 320.0], [0, 1120.0, 240.0], [0, 0, 1]], dtype=D64))


def test_square_box_keeps_centre():
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 30.0, 10.0]], dtype=D64)
    sq = square_box(box, scale=1.25)
    torch.testing.assert_close((sq[:, :2] + sq[:, 2:]) / 2, (box[:, :2] + box[:, 2:]) / 2)
    torch.testing.assert_close(sq[:, 2] - sq[:, 0], torch.tensor([100.0, 37.5], dtype=D64))
    torch.testing.assert_close(sq[:, 3] - sq[:, 1], sq[:, 2] - sq[:, 0])


def _blob_image(H: int, W: int, centres: list[tuple[float, float]], sigma: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    img = torch.zeros(len(centres), 1, H, W)
    for i, (x, y) in enumerate(centres):
        img[i, 0] = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return img


def _centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (x, y) of the part of a 2D map above 20 % of its peak."""
    H, W = img.shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=img.dtype), torch.arange(W, dtype=img.dtype), indexing="ij")
    w = (img - 0.2 * img.max()).clamp_min(0)
    return torch.stack([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def test_crop_single_pixel_lands_where_transform_says():
    img = torch.zeros(1, 1, 120, 160)
    img[0, 0, 50, 70] = 1.0  # pixel (x=70, y=50)
    box = torch.tensor([[40.0, 30.0, 100.0, 90.0]])
    crop = crop_images(img, box, 120)[0, 0]  # 2x upscale
    r, c = divmod(int(crop.argmax()), crop.shape[1])
    q = apply_transform_2d(crop_transform(box, 120)[0], torch.tensor([[70.0, 50.0]]))[0]
    assert abs(c - q[0].item()) <= 0.5 and abs(r - q[1].item()) <= 0.5
    assert (c, r) == (60, 40)


@pytest.mark.parametrize("out_size", [120, 30, (64, 48)])
def test_crop_blob_centroid_matches_transform(out_size):
    """Sub-pixel blobs in a batch of two images with different boxes (non-square output too)."""
    centres = [(70.3, 50.6), (33.7, 81.2)]
    img = _blob_image(120, 160, centres)
    box = torch.tensor([[40.0, 30.0, 100.0, 90.0], [10.5, 55.0, 70.5, 115.0]])
    crops = crop_images(img, box, out_size)
    A = crop_transform(box, out_size)
    q = apply_transform_2d(A, torch.tensor(centres)[:, None])[:, 0]
    for i in range(2):
        crop = crops[i, 0]
        r, c = divmod(int(crop.argmax()), crop.shape[1])
        # bilinear upsampling flattens the peak between source pixels, so the argmax is only within 1 px;
        # the centroid is the precise check
        assert abs(c - q[i, 0].item()) <= 1.0 and abs(r - q[i, 1].item()) <= 1.0
        torch.testing.assert_close(_centroid(crop), q[i], atol=0.1, rtol=0)


def test_crop_of_full_box_is_identity():
    img = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    out = crop_images(img, torch.tensor([[0.0, 0.0, 32.0, 24.0]]), (32, 24))
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)
    # the box centre lands on (out_w / 2, out_h / 2) (documented convention of crop_transform)
    A = crop_transform(torch.tensor([10.0, 20.0, 74.0, 84.0]), 32)
    torch.testing.assert_close(apply_transform_2d(A, torch.tensor([[42.0, 52.0]])), torch.tensor([[16.0, 16.0]]))


def test_crop_intrinsics_consistent_with_transform():
    box = torch.tensor([[250.0, 180.0, 410.0, 340.0]], dtype=D64)
    S = 192
    Kc = crop_intrinsics(K0, box, S)[0]
    pts = torch.tensor([[0.05, -0.03, 0.8], [-0.1, 0.02, 1.1], [0.0, 0.0, 0.9]], dtype=D64)
    via_crop_K = project_points(pts, Kc)
    via_transform = apply_transform_2d(crop_transform(box, S)[0], project_points(pts, K0))
    torch.testing.assert_close(via_crop_K, via_transform)
    # TRG supplementary: fx' = fx S/b, cx' = (cx - l) S/b
    b = 160.0
    torch.testing.assert_close(Kc[0, 0], torch.tensor(500.0 * S / b, dtype=D64))
    torch.testing.assert_close(Kc[1, 1], torch.tensor(520.0 * S / b, dtype=D64))
    torch.testing.assert_close(Kc[0, 2], torch.tensor((319.5 - 250.0) * S / b, dtype=D64))
    torch.testing.assert_close(Kc[1, 2], torch.tensor((239.5 - 180.0) * S / b, dtype=D64))


def test_apply_transform_2d_homography():
    Hm = torch.tensor([[1.0, 0.1, 2.0], [0.0, 1.2, -1.0], [1e-3, 2e-3, 1.0]], dtype=D64)
    p = torch.tensor([[10.0, 20.0], [-5.0, 3.0]], dtype=D64)
    ph = torch.cat([p, torch.ones(2, 1, dtype=D64)], -1) @ Hm.T
    torch.testing.assert_close(apply_transform_2d(Hm, p), ph[:, :2] / ph[:, 2:])


def test_ray_rotation():
    torch.testing.assert_close(ray_rotation(K0, torch.tensor([319.5, 239.5], dtype=D64)), torch.eye(3, dtype=D64))
    uv = torch.tensor([[100.0, 50.0], [600.0, 400.0], [319.5, 10.0]], dtype=D64)
    R = ray_rotation(K0, uv)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=D64).expand(3, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(3, dtype=D64))
    z = R[..., 2]  # image of the optical axis
    # it projects to the pixel it was aimed at
    torch.testing.assert_close(project_points(z[:, None], K0)[:, 0], uv)
    # minimal rotation: the axis is perpendicular to the optical axis
    assert matrix_to_rotvec(R)[:, 2].abs().max() < 1e-12


def test_depth_relative_points(rotations):
    t = torch.tensor([0.05, -0.02, 0.7], dtype=D64)
    head = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -0.1], [0.03, 0.04, 0.0]], dtype=D64)
    cam = transform_points(head, torch.eye(3, dtype=D64), t)
    p = depth_relative_points(cam, K0, t)
    torch.testing.assert_close(p[:, :2], project_points(cam, K0))
    torch.testing.assert_close(p[0, 2], torch.tensor(0.0, dtype=D64))  # head centre depth -> z = 0
    torch.testing.assert_close(p[1, 2], torch.tensor(-0.1 * 500.0 / 0.7, dtype=D64))  # nearer -> negative
    torch.testing.assert_close(p[2, 2], torch.tensor(0.0, dtype=D64))
    # batched with a rotation
    camb = transform_points(head[None].expand(2, 3, 3), rotations[:2], t[None].expand(2, 3))
    pb = depth_relative_points(camb, K0, t[None].expand(2, 3))
    assert pb.shape == (2, 3, 3)
    torch.testing.assert_close(pb[:, 0, 2], torch.zeros(2, dtype=D64))


def test_crop_normalisation_is_the_align_corners_grid():
    """Pixel 0 -> -1, pixel S-1 -> +1 (hand-derived), and the inverse round-trips."""
    from hpe_bench.geometry import crop_to_normalized, normalized_to_crop
    px = torch.tensor([[0.0, 47.0], [23.5, 0.0]], dtype=torch.float64)
    n = crop_to_normalized(px, 48)
    assert torch.allclose(n, torch.tensor([[-1.0, 1.0], [0.0, -1.0]], dtype=torch.float64))
    assert torch.allclose(normalized_to_crop(n, 48), px)


def test_box_features_by_hand():
    """I_bbox of a 100 px box centred at (420, 260) under f = 1000, c = (320, 240): (0.1, 0.02, 0.1)."""
    K = G.make_intrinsics(torch.tensor(1000.0), torch.tensor(1000.0), torch.tensor(320.0), torch.tensor(240.0))
    box = torch.tensor([370.0, 210.0, 470.0, 310.0])
    torch.testing.assert_close(G.box_features(box, K), torch.tensor([0.1, 0.02, 0.1]))


def test_similarity_rotation_by_hand():
    """S = 2 * Rz(30 deg) + shift -> Q3 = Rz(30 deg) in the camera's x-y plane; a mirror gives det -1."""
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    S = torch.tensor([[[2 * c, -2 * s, 5.0], [2 * s, 2 * c, -3.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(G.similarity_rotation(S), torch.tensor([[[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]]))
    M = torch.tensor([[[-1.0, 0.0, 99.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.linalg.det(G.similarity_rotation(M)).item() == -1.0
