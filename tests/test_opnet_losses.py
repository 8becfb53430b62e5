"""OpNet loss terms: reference values of shared/reference/opnet.md (float64, 1e-5) and properties."""
from __future__ import annotations

import math

import pytest
import torch

from hpe_bench.geometry import axis_rotation, matrix_to_quat, quat_to_matrix
from hpe_bench.losses.opnet_terms import (
    EYELID_POINTS, LANDMARK_WEIGHTS_CODE, LANDMARK_WEIGHTS_PAPER, coord_nll, gaussian_nll_diag,
    laplace_points_nll, quat_norm_loss, quat_rotation_loss, rotation_delta, so3_nll, squared_error,
    weighted_l1_points,
)

D = torch.float64
TOL = dict(atol=1e-5, rtol=0)
L_REF = torch.tensor([[0.1, 0, 0], [0.02, 0.2, 0], [0, 0.03, 0.3]], dtype=D)
IDENTITY_Q = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=D)


def _close(actual, expected, atol=1e-7, rtol=1e-7, msg=""):
    """Like ``torch.testing.assert_close`` (whose first call costs ~2 s of lazy imports on CPU)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (msg, actual, expected)


def _quat_about(axis: str, angle: float) -> torch.Tensor:
    return matrix_to_quat(axis_rotation(axis, torch.tensor([angle], dtype=D)))


def _random_quats(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=D)
    return q / q.norm(dim=-1, keepdim=True)


def _hamilton(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Independent oracle: Hamilton product of xyzw quaternions."""
    ux, uy, uz, uw = u.unbind(-1)
    vx, vy, vz, vw = v.unbind(-1)
    return torch.stack([
        uw * vx + ux * vw + uy * vz - uz * vy,
        uw * vy - ux * vz + uy * vw + uz * vx,
        uw * vz + ux * vy - uy * vx + uz * vw,
        uw * vw - ux * vx - uy * vy - uz * vz,
    ], -1)


def _conj(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([-q[..., :3], q[..., 3:]], -1)


# ------------------------------------------------------------------------------------- rotation loss

@pytest.mark.parametrize("deg, ref", [(10, 0.0075961), (45, 0.1464466), (90, 0.5), (180, 1.0)])
def test_rot_loss_reference(deg, ref):
    q = _quat_about("y", math.radians(deg))
    assert quat_rotation_loss(IDENTITY_Q, q).item() == pytest.approx(ref, abs=1e-5)


def test_rot_loss_is_half_one_minus_cos_and_sign_invariant():
    q_hat, q = _random_quats(64, 1), _random_quats(64, 2)
    delta = rotation_delta(q_hat, q).norm(dim=-1)
    loss = quat_rotation_loss(q_hat, q)
    _close(loss, (1 - torch.cos(delta)) / 2, atol=1e-10, rtol=0)
    _close(quat_rotation_loss(-q_hat, q), loss, atol=1e-12, rtol=0)
    _close(quat_rotation_loss(q_hat, -q), loss, atol=1e-12, rtol=0)


# -------------------------------------------------------------------------------------- rotation NLL

def test_rotation_delta_matches_quaternion_formula():
    """v = rotvec(conj(q_hat) * q): matrices compose like Hamilton products, and the delta computed
    through geometry equals the quaternion log (full angle) of conj(q_hat) * q."""
    q_hat, q = _random_quats(32, 3), _random_quats(32, 4)
    _close(quat_to_matrix(_hamilton(q_hat, q)), quat_to_matrix(q_hat) @ quat_to_matrix(q))
    d = _hamilton(_conj(q_hat), q)
    d = torch.where(d[:, 3:] < 0, -d, d)  # angle in [0, pi]
    s = d[:, :3].norm(dim=-1, keepdim=True)
    v_ref = d[:, :3] / s * 2 * torch.atan2(s, d[:, 3:])
    _close(rotation_delta(q_hat, q), v_ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("L, ref", [(torch.eye(3, dtype=D), 2.7618156), (L_REF, -1.8541302)])
def test_so3_nll_reference(L, ref):
    q = _quat_about("x", 0.1)
    assert so3_nll(IDENTITY_Q, q, L[None]).item() == pytest.approx(ref, **{"abs": 1e-5})
    # The delta lives in the predicted head frame: applying it on the right of any q_hat gives the
    # same value, and the sign of either quaternion does not matter.
    q_hat = _random_quats(5, 5)
    q2 = matrix_to_quat(quat_to_matrix(q_hat) @ axis_rotation("x", torch.full((5,), 0.1, dtype=D)))
    Ls = L.expand(5, 3, 3)
    _close(so3_nll(q_hat, q2, Ls), torch.full((5,), ref, dtype=D), **TOL)
    _close(so3_nll(-q_hat, q2, Ls), so3_nll(q_hat, -q2, Ls), atol=1e-9, rtol=0)


def test_so3_nll_side_of_delta_matters_for_anisotropic_L():
    """Left-applied delta (camera frame) gives another value: documents the convention choice."""
    q_hat = _quat_about("z", math.pi / 2)
    q_left = matrix_to_quat(axis_rotation("x", torch.tensor([0.1], dtype=D)) @ quat_to_matrix(q_hat))
    assert abs(so3_nll(q_hat, q_left, L_REF[None]).item() - (-1.8541302)) > 0.1


# ----------------------------------------------------------------------------------------- coord NLL

@pytest.mark.parametrize("L, ref", [(torch.eye(3, dtype=D), 2.7643156), (L_REF, -2.1105288)])
def test_coord_nll_reference(L, ref):
    c_hat = torch.tensor([[0.1, -0.2, 0.5]], dtype=D)
    c = torch.tensor([[0.15, -0.1, 0.45]], dtype=D)
    assert coord_nll(c_hat, c, L[None]).item() == pytest.approx(ref, abs=1e-5)


def test_squared_error():
    a, b = torch.tensor([[0.1, -0.2, 0.5]], dtype=D), torch.tensor([[0.15, -0.1, 0.45]], dtype=D)
    assert squared_error(a, b).item() == pytest.approx(0.015, abs=1e-12)
    assert squared_error(a, b, "mean").item() == pytest.approx(0.005, abs=1e-12)


# ---------------------------------------------------------------------------------------- landmarks

def _points(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 68, 3, generator=g, dtype=D)


def test_laplace_points_nll_reference():
    pts = _points()
    sign = torch.where(torch.rand(pts.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    pred = pts + 0.1 * sign.to(D)
    b = torch.full((68,), 1.01, dtype=D)
    out = laplace_points_nll(pred, pts, b, LANDMARK_WEIGHTS_CODE)
    _close(out, torch.full((2,), 0.6699956, dtype=D), **TOL)
    per_coord = math.log(2.02) + 0.1 / 1.01  # unweighted per-coordinate NLL
    paper = laplace_points_nll(pred, pts, b, LANDMARK_WEIGHTS_PAPER)
    _close(paper, torch.full((2,), per_coord * 60 / 68, dtype=D), atol=1e-12, rtol=0)
    # per-sample b (B, 68) and per-coordinate b (B, 68, 3) broadcast the same way
    _close(laplace_points_nll(pred, pts, b.expand(2, 68), LANDMARK_WEIGHTS_CODE), out)
    _close(laplace_points_nll(pred, pts, b[:, None].expand(2, 68, 3), LANDMARK_WEIGHTS_CODE), out)


def test_points_use_z_ignores_z_where_missing():
    pts, pred = _points(2, 0), _points(2, 1)
    pred_z = pred.clone()
    pred_z[..., 2] += 5.0
    use_z = torch.tensor([True, False])
    b = torch.full((68,), 0.5, dtype=D)
    for f in (lambda p: laplace_points_nll(p, pts, b, LANDMARK_WEIGHTS_PAPER, use_z),
              lambda p: weighted_l1_points(p, pts, LANDMARK_WEIGHTS_PAPER, use_z)):
        a, z = f(pred), f(pred_z)
        assert z[0] > a[0] + 1.0  # z counts for sample 0
        _close(z[1], a[1])  # and not for sample 1
    # xy only: the Laplace term is the mean over 2 dims, L1 the sum over 2 dims
    pred_xy = pts.clone()
    pred_xy[..., :2] += 0.1
    w1 = torch.ones(68, dtype=D)
    assert laplace_points_nll(pred_xy, pts, b, w1, False)[0].item() == pytest.approx(math.log(1.0) + 0.2, abs=1e-12)
    assert weighted_l1_points(pred_xy, pts, w1, False)[0].item() == pytest.approx(0.2, abs=1e-12)


def test_landmark_weights_and_eyelid_points_are_ignored():
    assert LANDMARK_WEIGHTS_PAPER.shape == LANDMARK_WEIGHTS_CODE.shape == (68,)
    eyelid = list(EYELID_POINTS)
    assert eyelid == [37, 38, 40, 41, 43, 44, 46, 47]
    assert (LANDMARK_WEIGHTS_PAPER[eyelid] == 0).all() and LANDMARK_WEIGHTS_PAPER.sum() == 60
    chin = list(range(8)) + list(range(9, 17))
    assert torch.allclose(LANDMARK_WEIGHTS_CODE[chin], torch.tensor(0.8)) and LANDMARK_WEIGHTS_CODE[8] == 1
    assert (LANDMARK_WEIGHTS_CODE[eyelid] == 0).all()
    pts, pred = _points(2, 0), _points(2, 1)
    moved = pred.clone()
    moved[:, eyelid] += 3.0
    b = torch.full((68,), 0.7, dtype=D)
    for w in (LANDMARK_WEIGHTS_PAPER, LANDMARK_WEIGHTS_CODE):
        _close(weighted_l1_points(moved, pts, w), weighted_l1_points(pred, pts, w))
        _close(laplace_points_nll(moved, pts, b, w), laplace_points_nll(pred, pts, b, w))
        moved2 = pred.clone()
        moved2[:, 36] += 3.0  # an eye corner still counts
        assert (weighted_l1_points(moved2, pts, w) != weighted_l1_points(pred, pts, w)).all()


# ------------------------------------------------------------------------------ shape, box, quat norm

def test_gaussian_nll_diag_and_quat_norm():
    x_hat = torch.tensor([[0.0, 1.0]], dtype=D)
    x = torch.tensor([[0.5, 1.0]], dtype=D)
    std = torch.tensor([1.0, 2.0], dtype=D)
    c = 0.5 * math.log(2 * math.pi)
    expected = ((c + 0.125) + (c + math.log(2.0))) / 2  # mean over components
    assert gaussian_nll_diag(x_hat, x, std).item() == pytest.approx(expected, abs=1e-12)
    q_raw = torch.tensor([[0.0, 0.0, 0.0, 2.0], [0.6, 0.0, 0.0, 0.8]], dtype=D)
    _close(quat_norm_loss(q_raw), torch.tensor([1.0, 0.0], dtype=D))


# ----------------------------------------------------------------------------------------- gradients

def test_gradients_finite_at_zero_error():
    q = torch.cat([IDENTITY_Q, _random_quats(7, 6)])
    q_hat = q.clone().requires_grad_(True)
    L = L_REF.expand(8, 3, 3).clone().requires_grad_(True)
    (quat_rotation_loss(q_hat, q).sum() + so3_nll(q_hat, q, L).sum()).backward()
    assert torch.isfinite(q_hat.grad).all() and torch.isfinite(L.grad).all()
    c = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    c_hat = c.clone().requires_grad_(True)
    coord_nll(c_hat, c, L_REF.expand(4, 3, 3)).sum().backward()
    assert torch.isfinite(c_hat.grad).all()
    pts = _points()
    pred = pts.clone().requires_grad_(True)
    b = torch.ones(68, dtype=D, requires_grad=True)
    (laplace_points_nll(pred, pts, b, LANDMARK_WEIGHTS_CODE) + weighted_l1_points(pred, pts, LANDMARK_WEIGHTS_CODE)).sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(b.grad).all()


# ---------------------------------------------------------------------------------------- OpNetLoss

def _pred_and_batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=D)  # noqa: E731
    q_raw = rn(B, 4)
    pred = {
        "quat_raw": q_raw, "quat": q_raw / q_raw.norm(dim=-1, keepdim=True), "coord": rn(B, 3),
        "rot_scale_tril": L_REF.expand(B, 3, 3).clone(), "coord_scale_tril": L_REF.expand(B, 3, 3).clone(),
        "roi": rn(B, 4), "roi_scale": torch.full((4,), 0.5, dtype=D),
        "shape_params": rn(B, 50), "shape_scale": torch.full((50,), 1.01, dtype=D),
        "landmarks_crop": rn(B, 68, 3), "points_scale": torch.full((68,), 1.01, dtype=D),
    }
    for k in list(pred):
        pred[k] = pred[k].requires_grad_(True)
    batch = {"quat": _random_quats(B, seed + 10), "coord": rn(B, 3), "roi": rn(B, 4),
             "shape_params": rn(B, 50), "landmarks_crop": rn(B, 68, 3)}
    for k in list(batch):
        batch[f"has_{k}"] = torch.ones(B, dtype=torch.bool)
    return pred, batch


def test_opnet_loss_matches_terms_with_paper_weights():
    from hpe_bench.losses.opnet import OpNetLoss
    pred, batch = _pred_and_batch()
    out = OpNetLoss().weighted_terms(pred, batch)
    w = LANDMARK_WEIGHTS_PAPER
    expected = {
        "rot": quat_rotation_loss(pred["quat"], batch["quat"]).mean(),
        "nll_rot": 0.01 * so3_nll(pred["quat"], batch["quat"], pred["rot_scale_tril"]).mean(),
        "coord": squared_error(pred["coord"], batch["coord"]).mean(),
        "nll_coord": 0.01 * coord_nll(pred["coord"], batch["coord"], pred["coord_scale_tril"]).mean(),
        "shape": 0.01 * squared_error(pred["shape_params"], batch["shape_params"]).mean(),
        "nll_shape": 1e-4 * gaussian_nll_diag(pred["shape_params"], batch["shape_params"], pred["shape_scale"]).mean(),
        "points": weighted_l1_points(pred["landmarks_crop"], batch["landmarks_crop"], w).mean(),
        "nll_points": 0.01 * laplace_points_nll(pred["landmarks_crop"], batch["landmarks_crop"], pred["points_scale"], w).mean(),
        "roi": 0.01 * squared_error(pred["roi"], batch["roi"]).mean(),
        "nll_roi": 1e-4 * gaussian_nll_diag(pred["roi"], batch["roi"], pred["roi_scale"]).mean(),
        "quat_norm": 1e-6 * quat_norm_loss(pred["quat_raw"]).mean(),
    }
    assert set(out) == set(expected) | {"loss"}
    for k, v in expected.items():
        _close(out[k], v, msg=k)
    _close(out["loss"], sum(expected.values()))


def test_opnet_loss_absent_label_contributes_nothing():
    """Sample 1 lacks every label (placeholder NaN labels): it adds nothing to any labelled term and
    gets no gradient from them; the sums are still divided by the full batch size."""
    from hpe_bench.losses.opnet import OpNetLoss
    pred, batch = _pred_and_batch(B=3)
    for k in ("quat", "coord", "roi", "shape_params", "landmarks_crop"):
        batch[f"has_{k}"][1] = False
        batch[k][1] = float("nan")
    loss = OpNetLoss(alpha_quat_norm=0.0)  # the norm penalty needs no label, so leave it out here
    out = loss.weighted_terms(pred, batch)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for k, v in pred.items():
        if v.dim() >= 2 and v.shape[0] == 3 and k != "quat_raw":  # per-sample, labelled terms
            assert torch.isfinite(v.grad).all(), k
            assert (v.grad[1] == 0).all(), k
            assert (v.grad[[0, 2]] != 0).any(), k
    # equals 2/3 of the loss of the batch made of the two labelled samples
    sub_pred = {k: (v[[0, 2]] if v.dim() >= 2 and v.shape[0] == 3 else v) for k, v in pred.items()}
    sub_batch = {k: v[[0, 2]] for k, v in batch.items()}
    sub = loss.weighted_terms(sub_pred, sub_batch)
    for k in out:
        _close(out[k], sub[k] * 2 / 3, msg=k)


def test_opnet_loss_single_term_mask_and_xy_only_points():
    from hpe_bench.losses.opnet import OpNetLoss
    pred, batch = _pred_and_batch(B=2)
    batch["has_quat"] = torch.tensor([True, False])
    out = OpNetLoss().weighted_terms(pred, batch)
    _close(out["rot"], quat_rotation_loss(pred["quat"][:1], batch["quat"][:1]).sum() / 2)
    # 2D-only landmark labels: z of the target does not matter for that sample
    batch["has_landmarks_crop_z"] = torch.tensor([True, False])
    a = OpNetLoss().weighted_terms(pred, batch)
    batch["landmarks_crop"][1, :, 2] += 10.0
    b = OpNetLoss().weighted_terms(pred, batch)
    _close(a["points"], b["points"])
    _close(a["nll_points"], b["nll_points"])


def test_opnet_loss_without_landmark_head():
    from hpe_bench.losses.opnet import OpNetLoss
    pred, batch = _pred_and_batch(B=2)
    for k in ("shape_params", "shape_scale", "landmarks_crop", "points_scale"):
        del pred[k]
    out = OpNetLoss(landmark_weights="code").weighted_terms(pred, batch)
    assert out["points"] == 0 and out["nll_shape"] == 0 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError):
        OpNetLoss(landmark_weights="nope")


def test_loss_runs_on_the_network_outputs():
    """OpNetLoss reads the keys the OpNet network produces (quat_raw included)."""
    from hpe_bench.losses.opnet import OpNetLoss
    from hpe_bench.models.opnet import OpNet

    torch.manual_seed(0)
    net = OpNet(backbone="mobilenetv1").eval()
    pred = net({"image": torch.zeros(2, 1, 129, 129)})
    batch = {k: pred[k].detach().clone() for k in ("quat", "coord", "roi", "shape_params", "landmarks_crop")}
    batch.update({f"has_{k}": torch.ones(2, dtype=torch.bool) for k in ("quat", "coord", "roi", "shape_params",
                                                                       "landmarks_crop")})
    terms = OpNetLoss().weighted_terms(pred, batch)
    assert torch.isfinite(terms["loss"]) and terms["rot"].abs() < 1e-6  # prediction == label
