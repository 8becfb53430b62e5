"""`hpe-bench score`: every accepted format against hand-computed answers, id checks, re-scoring, conventions."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench import score as S
from hpe_bench.data.synthetic.dataset import SyntheticDataset
from hpe_bench.table import collect

ROOT = Path(__file__).resolve().parents[1]
N = 12
SYN = ["data.test.num_samples=12", "data.train.image_size=96"]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """The synthetic protocol's test split (12 samples, 96 px) in its own cache, and its GT read directly."""
    tmp = tmp_path_factory.mktemp("score")
    cache = tmp / "cache"
    old = os.environ.get("HPE_BENCH_CACHE")
    os.environ["HPE_BENCH_CACHE"] = str(cache)
    ds = SyntheticDataset(split="test", num_samples=N, seed=0, image_size=96, cache_dir=str(cache))
    ds.prepare()
    samples = [ds[i] for i in range(len(ds))]
    ids = [s["sample_id"] for s in samples]
    R = torch.tensor(np.stack([s["R"] for s in samples]), dtype=torch.float64)
    t = torch.tensor(np.stack([s["t"] for s in samples]), dtype=torch.float64)
    yield tmp, ids, R, t
    if old is None:
        os.environ.pop("HPE_BENCH_CACHE", None)
    else:
        os.environ["HPE_BENCH_CACHE"] = old


def matrix_frame(ids, R, t=None, t_scale=1.0):
    df = pd.DataFrame({"sample_id": ids})
    for i in range(3):
        for j in range(3):
            df[f"R_{i}{j}"] = R[:, i, j].numpy()
    if t is not None:
        df["tx"], df["ty"], df["tz"] = (t[:, k].numpy() * t_scale for k in range(3))
    return df


def run_score(tmp, name, df, *args, fmt="csv"):
    path = tmp / f"{name}.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    out = tmp / "outputs" / "external" / name
    rc = S.main([str(path), "--protocol", "synthetic", *SYN, "--out", str(out), *args])
    metrics = json.loads((out / "metrics.json").read_text()) if rc == 0 else None
    return rc, metrics, out


def rotated_10deg(R):
    R = R.clone()
    R[0] = G.axis_rotation("x", torch.tensor(math.radians(10.0), dtype=torch.float64)) @ R[0]
    return R


def test_ground_truth_scores_zero_and_is_a_run_like_output(syn):
    tmp, ids, R, t = syn
    rc, m, out = run_score(tmp, "gt", matrix_frame(ids, R, t), "--method", "oracle")
    assert rc == 0
    assert m["geodesic_deg"] == pytest.approx(0.0, abs=1e-3) and m["mae_t_mm"] == pytest.approx(0.0, abs=1e-3)
    assert m["num_samples"] == N and m["count_rotation"] == N and m["external"] is True
    assert m["model"] == "oracle" and m["data"] == "synthetic" and m["euler_convention"] == "trg"
    assert m["protocol"]["name"] == "synthetic" and m["protocol"]["euler_rule"] == "trg"  # its protocol card
    assert m["ids"]["missing"] == [] and m["ids"]["extra"] == []
    df = pd.read_parquet(out / "predictions.parquet")
    assert len(df) == N and {"pred_R_00", "gt_R_22", "geodesic_deg"} <= set(df.columns)
    table = collect(tmp / "outputs")  # `make table` reads it like any run
    assert "external" in set(table["experiment"])


def test_one_sample_rotated_10_degrees_in_every_format(syn):
    tmp, ids, R, t = syn
    R10 = rotated_10deg(R)
    want = 10.0 / N
    _, m, _ = run_score(tmp, "mat10", matrix_frame(ids, R10), fmt="parquet")
    assert m["geodesic_deg"] == pytest.approx(want, abs=1e-3)
    assert "mae_t_mm" not in m  # no translation columns: translation metrics are not made up

    q = G.matrix_to_quat(R10).numpy()
    quat = pd.DataFrame({"qw": q[:, 3], "sample_id": ids, "qz": q[:, 2], "qx": q[:, 0], "qy": q[:, 1]})
    assert run_score(tmp, "quat10", quat)[1]["geodesic_deg"] == pytest.approx(want, abs=1e-3)

    wxyz = pd.DataFrame({"sample_id": ids, "q0": q[:, 3], "q1": q[:, 0], "q2": q[:, 1], "q3": q[:, 2]})
    assert run_score(tmp, "wxyz10", wxyz, "--quat-order", "wxyz")[1]["geodesic_deg"] == pytest.approx(want, abs=1e-3)
    assert run_score(tmp, "wxyz_as_xyzw", wxyz, "--quat-order", "xyzw")[1]["geodesic_deg"] > 20  # order matters

    for rule in ("trg", "opnet"):
        ypr = G.matrix_to_euler(R10, rule).numpy()
        eul = pd.DataFrame({"sample_id": ids, "yaw": ypr[:, 0], "pitch": ypr[:, 1], "roll": ypr[:, 2]})
        got = run_score(tmp, f"eul_{rule}", eul, "--euler-rule", rule)[1]["geodesic_deg"]
        assert got == pytest.approx(want, abs=1e-3)
        rad = eul.assign(yaw=np.radians(eul.yaw), pitch=np.radians(eul.pitch), roll=np.radians(eul.roll))
        got = run_score(tmp, f"rad_{rule}", rad, "--euler-rule", rule, "--angles", "rad")[1]["geodesic_deg"]
        assert got == pytest.approx(want, abs=1e-3)


def test_translation_units_and_a_10mm_offset(syn):
    tmp, ids, R, t = syn
    t_off = t.clone()
    t_off[3, 0] += 0.010
    _, m, _ = run_score(tmp, "mm", matrix_frame(ids, R, t_off, t_scale=1000.0), "--translation-units", "mm")
    assert m["tx_mm"] == pytest.approx(10.0 / N, abs=1e-3) and m["ty_mm"] == pytest.approx(0.0, abs=1e-3)
    assert m["mae_t_mm"] == pytest.approx(10.0 / (3 * N), abs=1e-3)


def test_missing_and_extra_ids_are_reported_never_dropped(syn, capsys):
    tmp, ids, R, t = syn
    short = matrix_frame(ids, R).iloc[2:]
    rc, _, out = run_score(tmp, "short", short)
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "2 protocol ids have no prediction" in err and ids[0] in err
    rc, m, _ = run_score(tmp, "short_ok", short, "--allow-missing")
    assert rc == 0 and m["num_samples"] == N - 2 and sorted(m["ids"]["missing"]) == sorted(ids[:2])

    extra = pd.concat([matrix_frame(ids, R), matrix_frame(["synthetic/test/999999"], R[:1])])
    assert run_score(tmp, "extra", extra)[0] == 2
    assert "synthetic/test/999999" in capsys.readouterr().err
    rc, m, _ = run_score(tmp, "extra_ok", extra, "--allow-extra")
    assert rc == 0 and m["num_samples"] == N and m["ids"]["extra"] == ["synthetic/test/999999"]


def test_bad_inputs_exit_2_with_a_message(syn, capsys):
    tmp, ids, R, t = syn
    ypr = G.matrix_to_euler(R, "trg").numpy()
    eul = pd.DataFrame({"sample_id": ids, "yaw": ypr[:, 0], "pitch": ypr[:, 1], "roll": ypr[:, 2]})
    assert run_score(tmp, "no_rule", eul)[0] == 2
    assert "--euler-rule" in capsys.readouterr().err
    assert run_score(tmp, "bad_rule", eul, "--euler-rule", "zyx")[0] == 2
    assert "unknown Euler rule 'zyx'" in capsys.readouterr().err
    assert run_score(tmp, "bad_conv", eul, "--convention", "nosuchnet")[0] == 2
    assert "nosuchnet" in capsys.readouterr().err
    assert S.main([str(tmp / "nope.csv"), "--protocol", "synthetic"]) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert run_score(tmp, "bad_protocol", eul, "--euler-rule", "trg", "--protocol", "no_such_data")[0] == 2
    assert "no_such_data" in capsys.readouterr().err
    not_rot = matrix_frame(ids, 2.0 * R)
    assert run_score(tmp, "scaled", not_rot)[0] == 2
    assert "not rotations" in capsys.readouterr().err


def test_rescore_a_run_under_another_rule_and_a_subset(syn, tmp_path):
    """A run's predictions.parquet, re-scored: geodesic does not depend on the rule; a subset averages its rows."""
    _, ids, R, t = syn
    run = tmp_path / "run"
    run.mkdir()
    R10 = rotated_10deg(R)
    frame = pd.DataFrame({"sample_id": ids, "dataset": "synthetic"})
    for i in range(3):
        for j in range(3):
            frame[f"pred_R_{i}{j}"], frame[f"gt_R_{i}{j}"] = R10[:, i, j].numpy(), R[:, i, j].numpy()
    for k, a in enumerate("xyz"):
        frame[f"pred_t_{a}"], frame[f"gt_t_{a}"] = t[:, k].numpy(), t[:, k].numpy()
    frame.to_parquet(run / "predictions.parquet")
    (run / "metrics.json").write_text(json.dumps({"experiment": "demo", "data": "synthetic", "model": "m",
                                                  "euler_convention": "trg"}))
    assert S.main(["--run", str(run), "--report-rule", "opnet", "--out", str(tmp_path / "all")]) == 0
    m = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert m["euler_convention"] == "opnet" and m["experiment"] == "demo (rescored)"
    assert m["geodesic_deg"] == pytest.approx(10.0 / N, abs=1e-3)
    # a 10 deg turn about the camera x axis of a frontal-ish head is mostly pitch under both rules
    assert m["mae_r_deg"] > 0 and m["mae_t_mm"] == pytest.approx(0.0, abs=1e-3)
    (tmp_path / "ids.txt").write_text("\n".join(ids[:4]) + "\n")
    assert S.main(["--run", str(run), "--ids", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "sub")]) == 0
    m = json.loads((tmp_path / "sub" / "metrics.json").read_text())
    assert m["num_samples"] == 4 and m["geodesic_deg"] == pytest.approx(10.0 / 4, abs=1e-3)


# -- conventions of other methods (geometry.external), from their public code ------------------------------
def sixdrepnet_get_R(x, y, z):
    """6DRepNet's utils.get_R(pitch, yaw, roll), as published: Rz(z) @ Ry(y) @ Rx(x), numpy."""
    Rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return Rz.dot(Ry.dot(Rx))


@pytest.mark.parametrize("pyr", [(0.1, 0.2, 0.3), (-0.5, 1.1, -0.2), (0.0, -1.3, 0.7)])
def test_sixdrepnet_matrix_is_the_transposed_pose_para_in_flipped_axes(pyr):
    p, y, r = pyr
    R6 = torch.tensor(sixdrepnet_get_R(p, y, r))
    ours = G.pose_para_to_matrix(*(torch.tensor(v, dtype=torch.float64) for v in (p, y, r)))
    torch.testing.assert_close(G.sixdrepnet_matrix_to_matrix(R6), ours, atol=1e-12, rtol=0)
    torch.testing.assert_close(G.sixdrepnet_matrix_to_matrix(G.sixdrepnet_matrix_to_matrix(R6)), R6)
    # its (yaw, pitch, roll) outputs are Pose_Para's = the "opnet" rule
    ypr = G.matrix_to_euler(ours, G.EXTERNAL_EULER_RULES["6drepnet"])
    torch.testing.assert_close(ypr, torch.tensor(np.degrees([y, p, r])), atol=1e-9, rtol=0)


@pytest.mark.slow
def test_aflw2kmini_real_labels_as_hopenet_and_6drepnet_outputs(shared_assets, tmp_path, monkeypatch):
    """The 16 real AFLW2000-3D labels written as a Hopenet (yaw, pitch, roll) file and as 6DRepNet matrices
    score 0 on the aflw2kmini protocol; read with the other rule they do not."""
    h5 = shared_assets / "aflw2kmini.h5"
    monkeypatch.setenv("HPE_BENCH_CACHE", str(tmp_path / "cache"))
    with h5py.File(h5, "r") as f:
        R = G.quat_to_matrix(torch.tensor(np.asarray(f["quats"]), dtype=torch.float64))
    ids = [f"aflw2kmini/{i:06d}" for i in range(len(R))]
    ypr = G.matrix_to_euler(R, "opnet").numpy()
    hopenet = tmp_path / "hopenet.csv"
    pd.DataFrame({"sample_id": ids, "yaw": ypr[:, 0], "pitch": ypr[:, 1], "roll": ypr[:, 2]}).to_csv(hopenet)
    common = ["--protocol", "aflw2kmini", f"data.root={h5}"]
    assert S.main([str(hopenet), *common, "--convention", "hopenet", "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["num_samples"] == 16 and m["euler_convention"] == "opnet"
    assert m["geodesic_deg"] == pytest.approx(0.0, abs=1e-3) and m["mae_r_deg"] == pytest.approx(0.0, abs=1e-3)
    assert S.main([str(hopenet), *common, "--euler-rule", "trg", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["geodesic_deg"] > 1.0
    six = matrix_frame(ids, G.sixdrepnet_matrix_to_matrix(R))  # what 6DRepNet's matrix would be
    six.to_csv(tmp_path / "six.csv", index=False)
    assert S.main([str(tmp_path / "six.csv"), *common, "--convention", "6drepnet", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["geodesic_deg"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow
def test_console_script_score_reports_unknown_ids(tmp_path):
    script = Path(sys.executable).parent / "hpe-bench"
    df = pd.DataFrame({"sample_id": ["nope/1"], **{c: [float(c[-2] == c[-1])] for c in S.MATRIX_COLS}})
    df.to_csv(tmp_path / "p.csv", index=False)
    env = dict(os.environ, HPE_BENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([str(script), "score", str(tmp_path / "p.csv"), "--protocol", "synthetic",
                           "data.test.num_samples=4", "data.train.image_size=96", "--out", str(tmp_path / "o")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "nope/1" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# -- the scorer tells the truth: non-numbers, non-finite values, partial translations, reflections, bf16 ---------
def test_text_cell_exits_2_naming_column_sample_and_value(syn, capsys):
    tmp, ids, R, t = syn
    df = matrix_frame(ids, R, t).astype({"R_11": object, "tz": object})
    df.loc[4, "R_11"] = "abc"
    rc, _, out = run_score(tmp, "abc", df)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists() and "Traceback" not in err
    assert "column 'R_11': 1 value is not a number" in err and repr(ids[4]) in err and "'abc'" in err
    assert run_score(tmp, "abc_allowed", df, "--allow-nonfinite")[0] == 2  # text is never a missing value
    df = matrix_frame(ids, R, t).astype({"tz": object})
    df.loc[7, "tz"], df.loc[9, "tz"] = "n/a?", "0.5m"
    assert run_score(tmp, "abc_tz", df)[0] == 2
    err = capsys.readouterr().err
    assert "column 'tz': 2 values are not a number" in err and repr(ids[7]) in err


def test_text_cell_through_the_real_cli_has_no_traceback(syn):
    """`python -m hpe_bench score` (the console entry's dispatcher): exit 2, one line, no traceback. The file is
    checked before the protocol is read, so this costs no dataset."""
    tmp, ids, R, t = syn
    df = matrix_frame(ids, R).astype({"R_00": object})
    df.loc[1, "R_00"] = "abc"
    df.to_csv(tmp / "abc_cli.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "hpe_bench", "score", str(tmp / "abc_cli.csv"), "--protocol",
                           "synthetic", *SYN, "--out", str(tmp / "abc_cli")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "'R_00'" in proc.stderr and ids[1] in proc.stderr
    assert not (tmp / "abc_cli").exists()


def test_numeric_columns_read_nan_and_inf_text_as_numbers():
    df = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "x": ["1.5", "nan", "-inf", None], "y": [1, 2, 3, 4]})
    v = S.numeric_columns(df, ["x", "y"])
    assert v[0, 0] == 1.5 and math.isnan(v[1, 0]) and v[2, 0] == -math.inf and math.isnan(v[3, 0])
    assert v[:, 1].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_nan_translation_is_an_error_unless_allowed_and_then_recorded(syn, capsys):
    tmp, ids, R, t = syn
    df = matrix_frame(ids, R, t)
    df.loc[3, "tx"] += 0.010  # 10 mm off on sample 3
    df.loc[5, "tx"] = np.nan
    rc, _, out = run_score(tmp, "nan_tx", df)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "1 sample has a non-finite translation value" in err and "tx: 1" in err and repr(ids[5]) in err
    assert "--allow-nonfinite" in err
    rc, m, out = run_score(tmp, "nan_tx_ok", df, "--allow-nonfinite")
    assert rc == 0
    assert m["num_samples"] == N and m["count_rotation"] == N and m["count_translation"] == N - 1
    assert m["tx_mm"] == pytest.approx(10.0 / (N - 1), abs=1e-3)  # sample 5 left out, not averaged as 0 or NaN
    assert m["ids"]["left_out"]["translation"] == {"count": 1, "ids": [ids[5]]}
    assert m["ids"]["left_out"]["rotation"] == {"count": 0, "ids": []}
    rows = pd.read_parquet(out / "predictions.parquet").set_index("sample_id")
    assert math.isnan(rows.loc[ids[5], "pred_t_x"]) and math.isnan(rows.loc[ids[5], "tx_mm"])
    assert rows.loc[ids[5], "geodesic_deg"] == pytest.approx(0.0, abs=1e-3)  # its rotation is still scored


def test_nonfinite_rotation_is_an_error_unless_allowed_and_then_recorded(syn, capsys):
    tmp, ids, R, t = syn
    df = matrix_frame(ids, rotated_10deg(R), t)  # sample 0 is 10 deg off
    df.loc[2, "R_01"] = np.inf
    df.loc[6, "R_22"] = np.nan
    rc, _, out = run_score(tmp, "inf_R", df)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "2 samples have a non-finite matrix rotation value" in err and "R_01: 1, R_22: 1" in err
    assert repr(ids[2]) in err and "R_01 = inf" in err
    rc, m, out = run_score(tmp, "inf_R_ok", df, "--allow-nonfinite")
    assert rc == 0
    assert m["count_rotation"] == N - 2 and m["geodesic_deg"] == pytest.approx(10.0 / (N - 2), abs=1e-3)
    assert m["count_translation"] == N and m["num_samples"] == N  # their translations are still scored
    assert m["ids"]["left_out"]["rotation"] == {"count": 2, "ids": sorted([ids[2], ids[6]])}
    assert m["ids"]["missing"] == [] and m["ids"]["scored"] == N
    rows = pd.read_parquet(out / "predictions.parquet").set_index("sample_id")
    assert math.isnan(rows.loc[ids[2], "geodesic_deg"]) and rows.loc[ids[2], "mae_t_mm"] == pytest.approx(0, abs=1e-3)

    ypr = G.matrix_to_euler(R, "trg").numpy()
    eul = pd.DataFrame({"sample_id": ids, "yaw": ypr[:, 0], "pitch": ypr[:, 1], "roll": ypr[:, 2]})
    eul.loc[8, "roll"] = np.nan  # an empty cell in the CSV
    assert run_score(tmp, "nan_roll", eul, "--euler-rule", "trg")[0] == 2
    err = capsys.readouterr().err
    assert "non-finite euler rotation value" in err and repr(ids[8]) in err and "roll = nan" in err
    rc, m, _ = run_score(tmp, "nan_roll_ok", eul, "--euler-rule", "trg", "--allow-nonfinite")
    assert rc == 0 and m["count_rotation"] == N - 1 and m["num_samples"] == N - 1  # no translation either: no row
    assert m["ids"]["left_out"]["rotation"]["ids"] == [ids[8]] and "translation" not in m["ids"]["left_out"]


def test_partial_translation_is_an_error(syn, capsys):
    tmp, ids, R, t = syn
    df = matrix_frame(ids, R, t).drop(columns=["tz"])
    rc, _, out = run_score(tmp, "no_tz", df)
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "found ['tx', 'ty'], missing ['tz']" in err
    assert run_score(tmp, "only_ty", matrix_frame(ids, R, t).drop(columns=["tx", "tz"]))[0] == 2
    assert "missing ['tx', 'tz']" in capsys.readouterr().err


def test_reflections_count_as_non_rotations(syn, capsys):
    tmp, ids, R, t = syn
    Rf = R.clone()
    Rf[1] = -R[1]  # orthonormal, det -1
    rc, _, out = run_score(tmp, "reflection", matrix_frame(ids, Rf))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "1 matrix is not a rotation (1 reflection, det < 0)" in err and repr(ids[1]) in err
    assert "det = -1" in err and "--project-rotations" not in err  # nothing to project
    Rf[4], Rf[7] = 2.0 * R[4], R[7] + 0.01  # not orthonormal: far off, and near (|R^T R - I| ~ 0.02)
    rc, _, _ = run_score(tmp, "mixed", matrix_frame(ids, Rf))
    err = capsys.readouterr().err
    assert rc == 2 and "3 matrices are not rotations (2 not orthonormal, |R^T R - I| > 0.001; 1 reflection" in err
    assert "1 of them are within |R^T R - I| <= 0.1" in err and "--project-rotations" in err
    rc, _, _ = run_score(tmp, "mixed_projected", matrix_frame(ids, Rf), "--project-rotations")
    err = capsys.readouterr().err  # projection never fixes a reflection or a matrix far from a rotation
    assert rc == 2 and "2 matrices are not rotations (1 not orthonormal, |R^T R - I| > 0.1; 1 reflection" in err


def bf16(R):
    return R.to(torch.bfloat16).to(torch.float64)


def deviation(R):
    """max |R^T R - I| per matrix, numpy (independent of the scorer's torch code)."""
    R = R.numpy()
    return np.abs(np.einsum("nki,nkj->nij", R, R) - np.eye(3)).max(axis=(1, 2))


def test_project_rotations_on_a_bf16_rounded_table(syn, capsys):
    tmp, ids, R, t = syn
    Rb = bf16(R)
    dev = deviation(Rb)
    n_off = int((dev > 1e-3).sum())
    assert 0 < n_off and dev.max() < 0.1  # bf16 rounding (8-bit mantissa) leaves most matrices off by > 1e-3
    rc, _, _ = run_score(tmp, "bf16", matrix_frame(ids, Rb))
    err = capsys.readouterr().err
    assert rc == 2 and f"{n_off} matrices are not rotations ({n_off} not orthonormal" in err
    assert "--project-rotations" in err
    rc, m, _ = run_score(tmp, "bf16_projected", matrix_frame(ids, Rb), "--project-rotations")
    assert rc == 0 and m["count_rotation"] == N
    check = m["rotation_check"]
    assert check["projected"] == n_off and len(check["projected_ids"]) == n_off
    assert check["max_deviation"] == pytest.approx(dev.max(), rel=1e-9)
    # each entry is rounded by at most 2^-9 relative, so |E|_F <= 3 * 2^-9 and the nearest rotation is within
    # that angle (rad) of the true one: 0.34 deg
    assert 0 < m["geodesic_deg"] < math.degrees(3 * 2 ** -9)
    q = pd.DataFrame({"sample_id": ids, **dict(zip(S.QUAT_COLS, G.matrix_to_quat(R).numpy().T))})
    assert run_score(tmp, "quat_projected", q, "--project-rotations")[0] == 2  # only matrices are projected
    assert "applies to matrices" in capsys.readouterr().err


def run_dir_with(tmp_path, ids, pred_R, R, t, pred_t=None):
    run = tmp_path / "run"
    run.mkdir()
    frame = pd.DataFrame({"sample_id": ids, "dataset": "synthetic"})
    for i in range(3):
        for j in range(3):
            frame[f"pred_R_{i}{j}"], frame[f"gt_R_{i}{j}"] = pred_R[:, i, j].numpy(), R[:, i, j].numpy()
    for k, a in enumerate("xyz"):
        frame[f"pred_t_{a}"] = np.nan if pred_t is None else pred_t[:, k].numpy()
        frame[f"gt_t_{a}"] = t[:, k].numpy()
    frame.to_parquet(run / "predictions.parquet")
    (run / "metrics.json").write_text(json.dumps({"experiment": "demo", "data": "synthetic", "model": "m",
                                                  "euler_convention": "trg"}))
    return run


def test_rescore_a_bf16_run_needs_project_rotations(syn, tmp_path, capsys):
    """A run trained in bf16 wrote rounded matrices (README's `score --run ... --report-rule opnet`); its model
    predicts no translation, so its pred_t_* are all NaN: that is no translation, not an error."""
    _, ids, R, t = syn
    run = run_dir_with(tmp_path, ids, bf16(R), R, t)
    assert S.main(["--run", str(run), "--report-rule", "opnet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "matrices are not rotations" in err and "--project-rotations" in err and "bf16" in err
    assert not (tmp_path / "a").exists()
    assert S.main(["--run", str(run), "--report-rule", "opnet", "--project-rotations",
                   "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["count_rotation"] == N and m["rotation_check"]["projected"] == int((deviation(bf16(R)) > 1e-3).sum())
    assert m["geodesic_deg"] < math.degrees(3 * 2 ** -9) and m["count_translation"] == 0 and "tx_mm" not in m
    assert m["source"]["project_rotations"] is True


def test_rescore_a_run_with_a_nan_prediction(syn, tmp_path, capsys):
    """A run whose model output NaN for one sample: named, exit 2; --allow-nonfinite records it."""
    _, ids, R, t = syn
    pred_R, pred_t = R.clone(), t.clone()
    pred_R[3, 1, 1] = float("nan")
    pred_t[3] = float("nan")
    run = run_dir_with(tmp_path, ids, pred_R, R, t, pred_t)
    assert S.main(["--run", str(run), "--out", str(tmp_path / "a")]) == 2
    assert repr(ids[3]) in capsys.readouterr().err
    assert S.main(["--run", str(run), "--allow-nonfinite", "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["count_rotation"] == N - 1 and m["count_translation"] == N - 1 and m["num_samples"] == N - 1
    assert m["ids"]["left_out"]["rotation"]["ids"] == [ids[3]] == m["ids"]["left_out"]["translation"]["ids"]
    assert m["geodesic_deg"] == pytest.approx(0.0, abs=1e-3) and m["mae_t_mm"] == pytest.approx(0.0, abs=1e-3)
