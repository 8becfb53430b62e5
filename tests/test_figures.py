"""Figures (hpe_bench.figures): yaw bins and uncertainty from a hand-made predictions table; the real entry
point on a tiny OpNet run for the checkpoint figures."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from hpe_bench import figures
from hpe_bench import geometry as G


def fake_predictions(run_dir, yaws, errors, sigma=None):
    """GT rotations of pure yaw (``trg`` rule) and the given geodesic errors."""
    R = G.euler_to_matrix(torch.tensor([[y, 0.0, 0.0] for y in yaws], dtype=torch.float64), "trg").numpy()
    cols = {f"gt_R_{i}{j}": R[:, i, j] for i in range(3) for j in range(3)}
    cols.update({f"pred_R_{i}{j}": R[:, i, j] for i in range(3) for j in range(3)})
    cols.update(sample_id=[f"s{k}" for k in range(len(yaws))], geodesic_deg=errors, mae_r_deg=np.asarray(errors) / 2)
    if sigma is not None:
        cols["sigma_rot_frobenius"] = sigma
    run_dir.mkdir(parents=True)
    pd.DataFrame(cols).to_parquet(run_dir / "predictions.parquet")
    (run_dir / "metrics.json").write_text(json.dumps({"experiment": "x", "seed": 1, "euler_convention": "trg"}))


def test_yaw_bins_count_and_average_by_absolute_yaw(tmp_path):
    fake_predictions(tmp_path / "run", yaws=[5.0, -10.0, 20.0, -50.0, 100.0], errors=[1.0, 3.0, 5.0, 7.0, 9.0])
    df, _ = figures.read_run(tmp_path / "run")
    table = figures.yaw_bin_table(df, "trg", width=15.0)
    assert list(table["hi"]) == [15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 105.0]  # |yaw| 100 widens the axis
    assert list(table["count"]) == [2, 1, 0, 1, 0, 0, 1]
    assert table["geodesic_deg"][0] == pytest.approx(2.0) and table["mae_r_deg"][0] == pytest.approx(1.0)
    assert np.isnan(table["geodesic_deg"][2])  # an empty bin is a gap, not a zero
    paths = figures.yaw_bins([tmp_path / "run"], tmp_path / "fig")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths) and {p.suffix for p in paths} == {".png", ".pdf"}


def test_uncertainty_needs_its_column(tmp_path):
    fake_predictions(tmp_path / "a", [0.0, 10.0, 20.0], [1.0, 2.0, 30.0], sigma=[0.01, 0.02, 0.5])
    fake_predictions(tmp_path / "b", [0.0], [1.0])
    assert figures.uncertainty([tmp_path / "a"], tmp_path / "fig")[0].is_file()
    with pytest.raises(ValueError, match="sigma_rot_frobenius"):
        figures.uncertainty([tmp_path / "b"], tmp_path / "fig")
    assert figures.main(["--out", str(tmp_path / "f"), "worst", str(tmp_path / "nowhere")]) == 2  # named, no traceback


@pytest.mark.slow
def test_figures_from_a_tiny_opnet_run(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hpe_bench", "model=opnet", "data=synthetic", "debug=default", "logger=none", f"hydra.run.dir={run}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "figs"
    status = figures.make_all(tmp_path, out, noise_limit=4, draws=2, sigmas=(0, 32), worst_n=4, translation_limit=16)
    assert all(v == "ok" for v in status.values()), status
    for name in ("run/yaw_bins", "run/worst_predictions", "opnet_fig3_uncertainty", "opnet_fig2_noise",
                 "trg_fig3_translation"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file(), name


def test_per_protocol_prediction_files(tmp_path):
    """A run tested on several protocols (predictions/<protocol>.parquet + metrics/<protocol>.json)."""
    fake_predictions(tmp_path / "tmp", yaws=[10.0, 40.0], errors=[2.0, 4.0])
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "metrics").mkdir()
    frame = pd.read_parquet(tmp_path / "tmp" / "predictions.parquet")
    for proto, rule in (("biwi_6dof", "trg"), ("aflw2000", "opnet")):
        frame.to_parquet(run / "predictions" / f"{proto}.parquet")
        (run / "metrics" / f"{proto}.json").write_text(json.dumps({"experiment": "x", "euler_convention": rule}))
    df, record = figures.read_run(run / "predictions" / "aflw2000.parquet")
    assert len(df) == 2 and record["euler_convention"] == "opnet"
    with pytest.raises(ValueError, match="several protocols"):
        figures.read_run(run)
    status = figures.make_all(tmp_path / "run", tmp_path / "figs")
    assert status == {"yaw-bins run aflw2000": "ok", "yaw-bins run biwi_6dof": "ok"}, status
