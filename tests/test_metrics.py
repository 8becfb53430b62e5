"""Metrics on hand-computed cases (expected values derived by hand in the comments, not by running the code)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpe_bench.assets import arkit_face
from hpe_bench.metrics import (
    ADDMetric, Dense3DMetric, FaceSizeMetric, NME2DMetric, PER_SAMPLE_KEYS, RotationMetrics,
    TranslationMetrics, build_metrics, compute_flat, computed_keys, per_sample_errors,
)
from hpe_bench.schema import collate

NAN = float("nan")


def rot(axis: str, deg: float) -> np.ndarray:
    """Right-handed elementary rotation, written out here so the tests do not lean on the geometry module."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def sample(**labels) -> dict:
    s = {"image": np.zeros((2, 2, 3), np.uint8), "box": np.array([0, 0, 2, 2], np.float32),
         "dataset": "test", "sample_id": str(len(labels)), "topology": labels.pop("topology", "")}
    s.update({k: np.asarray(v, np.float32) for k, v in labels.items()})
    return s


def tensors(**pred) -> dict:
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in pred.items()}


def run(metric, pred, batch) -> dict:
    metric.update(pred, batch)
    return {k: v.item() for k, v in metric.compute().items()}


# ---------------------------------------------------------------- rotation
def test_rotation_10deg_about_camera_y_split_per_rule():
    # GT rolled by 30 deg; prediction = GT followed by 10 deg about the camera y axis: R_hat = Ry(10) Rz(30).
    R_gt, R_hat = rot("z", 30), rot("y", 10) @ rot("z", 30)
    batch, pred = collate([sample(R=R_gt)]), tensors(R=[R_hat])
    # geodesic: R_gt^T R_hat = Rz(-30) Ry(10) Rz(30), a conjugate of a 10 deg rotation -> 10 under both rules.
    # opnet: R_hat = Rx(0) Ry(10) Rz(30) is already in 'XYZ' form -> (yaw, pitch, roll) = (10, 0, 30) vs (0, 0, 30).
    out = run(RotationMetrics("opnet"), pred, batch)
    assert out["geodesic_deg"] == pytest.approx(10, abs=1e-4)
    assert (out["yaw_deg"], out["pitch_deg"], out["roll_deg"]) == pytest.approx((10, 0, 0), abs=1e-4)
    assert out["mae_r_deg"] == pytest.approx(10 / 3, abs=1e-4) and out["count_rotation"] == 1
    # trg ('yxz', R = Rz(r) Rx(p) Ry(y)): R_hat rows = [c10 c30, -c10 s30, s10], [s30, c30, 0], [-s10 c30, s10 s30, c10]
    # yaw = atan2(-R20, R22) = atan(tan10 cos30); pitch = asin(R21) = asin(s10 s30); roll = atan2(-R01, R11) =
    # atan(c10 tan30); GT Rz(30) is (0, 0, 30).
    yaw = math.degrees(math.atan(math.tan(math.radians(10)) * math.cos(math.radians(30))))  # ~8.68
    pitch = math.degrees(math.asin(math.sin(math.radians(10)) * 0.5))  # ~4.98
    roll = 30 - math.degrees(math.atan(math.cos(math.radians(10)) * math.tan(math.radians(30))))  # ~0.38
    out = run(RotationMetrics("trg"), pred, batch)
    assert out["geodesic_deg"] == pytest.approx(10, abs=1e-4)
    assert (out["yaw_deg"], out["pitch_deg"], out["roll_deg"]) == pytest.approx((yaw, pitch, roll), abs=1e-4)
    assert out["mae_r_deg"] == pytest.approx((yaw + pitch + roll) / 3, abs=1e-4)


def test_opnet_rule_wraps_trg_rule_does_not():
    # roll 179 vs -179 (pure Rz, the same matrix under both rules): true error 2 deg.
    batch, pred = collate([sample(R=rot("z", -179))]), tensors(R=[rot("z", 179)])
    e_op, e_trg = per_sample_errors(pred, batch, "opnet"), per_sample_errors(pred, batch, "trg")
    assert e_op["roll_deg"].item() == pytest.approx(2, abs=1e-3)
    assert e_trg["roll_deg"].item() == pytest.approx(358, abs=1e-3)
    assert e_op["geodesic_deg"].item() == pytest.approx(2, abs=1e-3) == e_trg["geodesic_deg"].item()
    # yaw 179 vs -179: 'yxz' yaw = atan2(sin, cos) = +-179 -> 358 unwrapped; 'XYZ' yaw lies in [-90, 90]:
    # Ry(+-179) = Rx(180) Ry(+-1) Rz(180) -> yaw +-1 (error 2), pitch/roll +-180 (wrapped error 0).
    batch, pred = collate([sample(R=rot("y", -179))]), tensors(R=[rot("y", 179)])
    e_op, e_trg = per_sample_errors(pred, batch, "opnet"), per_sample_errors(pred, batch, "trg")
    assert e_trg["yaw_deg"].item() == pytest.approx(358, abs=1e-3)
    assert (e_op["yaw_deg"].item(), e_op["pitch_deg"].item(), e_op["roll_deg"].item()) == pytest.approx((2, 0, 0), abs=1e-3)


# ---------------------------------------------------------------- translation and ADD
def test_translation_mm_and_mae():
    t = np.array([0.05, -0.02, 0.6])
    batch = collate([sample(t=t), sample()])  # the 2nd sample has no t: skipped
    pred = tensors(t=[t + [0.001, -0.002, 0.003], [9.0, 9.0, 9.0]])
    out = run(TranslationMetrics(), pred, batch)
    assert (out["tx_mm"], out["ty_mm"], out["tz_mm"], out["mae_t_mm"]) == pytest.approx((1, 2, 3, 2), abs=1e-3)
    assert out["count_translation"] == 1


def test_add_pure_translation_and_rotation_about_z():
    R, t = rot("x", 20), np.array([0.0, 0.0, 0.5])
    verts = np.random.default_rng(0).normal(scale=0.1, size=(7, 3))
    # pure translation error d = (3, 4, 12) mm -> every vertex moves by |d| = 13 mm
    batch = collate([sample(R=R, t=t, vertices=verts)])
    out = run(ADDMetric(), tensors(R=[R], t=[t + [0.003, 0.004, 0.012]]), batch)
    assert out["add_mm"] == pytest.approx(13, abs=1e-3) and out["count_add"] == 1
    # GT R = I, prediction Rz(60): a point at radius r in the xy plane moves by the chord 2 r sin(30) = r.
    # Sample 0: 5 points at r = 0.1 m -> 100 mm; sample 1: 3 points at r = 0.05 m -> 50 mm (its 2 padding
    # vertices must not count: including them would give 30 mm).
    ring = lambda r, n: [[r * math.cos(a), r * math.sin(a), 0.0] for a in np.linspace(0, 5, n)]
    I = np.eye(3)
    batch = collate([sample(R=I, t=t, vertices=ring(0.1, 5)), sample(R=I, t=t, vertices=ring(0.05, 3)),
                     sample(R=I, t=t)])  # no vertices: skipped
    e = per_sample_errors(tensors(R=[rot("z", 60)] * 3, t=[t] * 3), batch)["add_mm"]
    assert e[:2].tolist() == pytest.approx([100, 50], abs=1e-3) and math.isnan(e[2])
    out = run(ADDMetric(), tensors(R=[rot("z", 60)] * 3, t=[t] * 3), batch)
    assert out["add_mm"] == pytest.approx(75, abs=1e-3) and out["count_add"] == 2


# ---------------------------------------------------------------- NME
def landmarks(x0, y0, w, h):
    """68 points whose bounding box is exactly (x0, y0, w, h)."""
    k = np.arange(68)
    return np.stack([x0 + w * k / 67, y0 + h * (k % 2)], -1)


def test_nme_known_offset_on_known_box():
    a, b = landmarks(10, 20, 100, 25), landmarks(0, 0, 40, 10)  # sqrt(w h) = 50 and 20
    batch = collate([sample(landmarks_2d=a), sample(landmarks_2d=b)])
    pred = tensors(landmarks_2d=[a + [3, 4], b + [6, 8]])  # errors 5 px and 10 px -> 0.1 and 0.5
    out = run(NME2DMetric(), pred, batch)
    assert out["nme2d"] == pytest.approx(0.3, abs=1e-6) and out["count_nme2d"] == 2


def test_nme_yaw_bins():
    lm = landmarks(10, 20, 100, 25)  # sqrt(w h) = 50: an x offset of k px gives NME k / 50
    rows = [  # (GT yaw or None for no R, has landmarks, x offset px)
        (10, True, 1), (-45, True, 2), (75, True, 3), (120, True, 4), (None, True, 5), (-20, True, 6), (10, False, 7)]
    samples, preds = [], []
    for yaw, has_lm, dx in rows:
        labels = {} if yaw is None else {"R": rot("y", yaw)}  # pure Ry: 'yxz' yaw = the angle itself
        if has_lm:
            labels["landmarks_2d"] = lm
        samples.append(sample(**labels))
        preds.append(lm + [dx, 0])
    out = run(NME2DMetric("trg"), tensors(landmarks_2d=preds), collate(samples))
    # overall: offsets 1..6 (the 7th has no GT landmarks) -> (1+2+3+4+5+6) / 6 / 50 = 0.07
    assert out["nme2d"] == pytest.approx(0.07, abs=1e-6) and out["count_nme2d"] == 6
    # [0,30): yaw 10, -20 -> (1 + 6) / 2 / 50; [30,60): -45 -> 2/50; [60,90]: 75 -> 3/50; 120 and no-R: no bin
    assert out["nme2d_yaw_0_30"] == pytest.approx(0.07, abs=1e-6) and out["count_nme2d_yaw_0_30"] == 2
    assert out["nme2d_yaw_30_60"] == pytest.approx(0.04, abs=1e-6) and out["count_nme2d_yaw_30_60"] == 1
    assert out["nme2d_yaw_60_90"] == pytest.approx(0.06, abs=1e-6) and out["count_nme2d_yaw_60_90"] == 1


# ---------------------------------------------------------------- dense and face size
TRI = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])  # right triangle, area 0.005 m^2 = 5000 mm^2


def one_triangle(name):
    if name != "tri":
        raise KeyError(name)
    return torch.tensor([[0, 1, 2]])


def test_dense_mean_median_and_skips():
    off = lambda mm: np.array([0.6, 0.8, 0.0]) * mm / 1000  # a shift of `mm` millimetres
    samples = [sample(vertices=TRI), sample(vertices=TRI), sample(vertices=TRI),
               sample(vertices=np.zeros((4, 3))),  # 4 GT vertices vs 3 predicted: not comparable
               sample()]  # no vertices
    preds = [TRI + off(1), TRI + off(2), TRI + off(6), TRI, TRI]
    out = run(Dense3DMetric(), tensors(vertices=preds), collate(samples))
    assert out["dense_mean_mm"] == pytest.approx(3, abs=1e-4)
    assert out["dense_median_mm"] == pytest.approx(2, abs=1e-4) and out["count_dense"] == 3
    # an even count: median = midpoint of the two central values (1, 2, 6, 7 -> 4)
    m = Dense3DMetric()
    m.update(tensors(vertices=preds[:3]), collate(samples[:3]))
    m.update(tensors(vertices=[TRI + off(7)]), collate([sample(vertices=TRI)]))
    assert m.compute()["dense_median_mm"].item() == pytest.approx(4, abs=1e-4)


def test_face_size_scaled_triangle():
    samples = [sample(vertices=TRI, topology="tri"), sample(vertices=TRI, topology="tri"),
               sample(vertices=TRI, topology="unknown"), sample(vertices=TRI, topology="")]
    preds = [2 * TRI, 0.5 * TRI, 2 * TRI, 2 * TRI]
    # area scales by s^2: |5000 - 20000| = 15000, |5000 - 1250| = 3750 -> mean 9375; unknown/empty topologies skipped
    out = run(FaceSizeMetric(one_triangle), tensors(vertices=preds), collate(samples))
    assert out["face_size_mm2"] == pytest.approx(9375, rel=1e-5) and out["count_face_size"] == 2


def test_face_size_arkit_topology_scales_with_s_squared():
    mean = arkit_face()["mean_vertices"].astype(np.float64)
    batch = collate([sample(vertices=mean, topology="arkit1220")] * 3)
    e = per_sample_errors(tensors(vertices=[mean, 2 * mean, 3 * mean]), batch)["face_size_mm2"]
    # |A - s^2 A| = (s^2 - 1) A: 0 for s = 1, and the ratio of s = 2 to s = 3 is 3 / 8
    assert e[0].item() == pytest.approx(0, abs=1e-2) and e[1].item() > 0
    assert (e[1] / e[2]).item() == pytest.approx(3 / 8, rel=1e-5)


# ---------------------------------------------------------------- masking, counts, merging, keys
def full_batch(n: int, seed: int, unlabelled: int = 0):
    """``n`` fully labelled samples (random poses, a scaled 3-vertex 'tri' mesh) then ``unlabelled`` samples
    without any label, and a noisy prediction for every sample."""
    rng = np.random.default_rng(seed)
    samples, pred = [], {"R": [], "t": [], "landmarks_2d": [], "vertices": []}
    for i in range(n + unlabelled):
        R = rot("y", rng.uniform(-80, 80)) @ rot("x", rng.uniform(-40, 40)) @ rot("z", rng.uniform(-30, 30))
        t = rng.normal(size=3) * 0.1 + [0, 0, 0.6]
        lm = landmarks(*rng.uniform(10, 100, size=4))
        V = TRI * rng.uniform(0.8, 1.2)
        samples.append(sample(R=R, t=t, landmarks_2d=lm, vertices=V, topology="tri") if i < n else sample())
        pred["R"].append(rot("x", rng.uniform(-5, 5)) @ R)
        pred["t"].append(t + rng.normal(size=3) * 0.01)
        pred["landmarks_2d"].append(lm + rng.normal(size=(68, 2)))
        pred["vertices"].append(V + rng.normal(size=V.shape) * 0.002)
    return tensors(**pred), collate(samples)


def collection():
    c = build_metrics("opnet")
    c["face_size"].triangles_fn = one_triangle
    return c


def test_unlabelled_samples_change_nothing_and_counts_are_per_metric():
    a, b = collection(), collection()
    a.update(*full_batch(4, seed=1))
    b.update(*full_batch(4, seed=1, unlabelled=3))  # 3 extra samples without labels, with predictions
    fa, fb = compute_flat(a), compute_flat(b)
    assert fa.keys() == fb.keys() == set(computed_keys())
    for k in computed_keys():
        assert fa[k] == pytest.approx(fb[k], nan_ok=True), k
    for k in ("count_rotation", "count_translation", "count_add", "count_nme2d", "count_dense", "count_face_size"):
        assert fb[k] == 4 and isinstance(fb[k], int)
    # a prediction without some keys: those metrics count nothing and report NaN, the others are unaffected
    pred, batch = full_batch(4, seed=1)
    c = collection()
    c.update({"R": pred["R"]}, batch)
    f = compute_flat(c)
    assert f["count_rotation"] == 4 and f["count_translation"] == f["count_add"] == f["count_dense"] == 0
    assert f["geodesic_deg"] == pytest.approx(fa["geodesic_deg"]) and math.isnan(f["mae_t_mm"])


def test_merge_state_of_halves_equals_whole():
    pred, batch = full_batch(10, seed=2, unlabelled=3)
    idx = torch.randperm(13, generator=torch.Generator().manual_seed(0))
    halves = [idx[:6], idx[6:]]
    part = lambda d, ix: {k: (v[ix] if isinstance(v, torch.Tensor) else [v[i] for i in ix.tolist()]) for k, v in d.items()}
    whole, first, second = collection(), collection(), collection()
    whole.update(pred, batch)
    first.update(part(pred, halves[0]), part(batch, halves[0]))
    second.update(part(pred, halves[1]), part(batch, halves[1]))
    for name in first.keys():
        first[name].merge_state(second[name])
    fw, fm = compute_flat(whole), compute_flat(first)
    for k in computed_keys():
        if k.startswith("count"):
            assert fw[k] == fm[k], k  # exact
        else:
            assert fw[k] == pytest.approx(fm[k], rel=1e-9, nan_ok=True), k
    assert fw["count_rotation"] == 10


def test_per_sample_table_nan_where_not_evaluated():
    pred, batch = full_batch(2, seed=3, unlabelled=1)
    e = per_sample_errors(pred, batch, "trg", triangles_fn=one_triangle)
    assert set(e) == set(PER_SAMPLE_KEYS)
    for k, v in e.items():
        assert v.shape == (3,) and bool(torch.isfinite(v[:2]).all()) and math.isnan(v[2]), k


def test_nan_prediction_on_a_labelled_sample_is_not_dropped():
    pred, batch = full_batch(3, seed=4)
    pred["R"][1] = NAN
    out = run(RotationMetrics("trg"), pred, batch)
    assert math.isnan(out["geodesic_deg"]) and out["count_rotation"] == 3


def test_bad_rule_raises_naming_it():
    for make in (lambda: RotationMetrics("xyz"), lambda: NME2DMetric("XYZ2"), lambda: build_metrics("yxz")):
        with pytest.raises(ValueError, match="unknown Euler rule"):
            make()
    with pytest.raises(ValueError, match="'nope'"):
        pred, batch = full_batch(1, seed=5)
        per_sample_errors(pred, batch, "nope")
