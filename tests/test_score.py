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
