"""Every model x training precision: predictions.parquet holds float64 proper rotations, and metrics.json equals an
independent recomputation from it (scipy, numpy; the docs/outputs.md recipe) to 1e-4 deg / 1e-4 mm.

One tiny multirun of the real entry point (`python -m hpe_bench -m model=... trainer.precision=...`) trains every
registered model for 2 steps under float32 and under bf16 autocast, then tests it on 20 synthetic images.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.spatial.transform import Rotation

from hpe_bench.models import list_models

ROOT = Path(__file__).resolve().parents[1]
MODELS = list_models()
PRECISIONS = ("32-true", "bf16-mixed")
R_COLS = [f"R_{i}{j}" for i in range(3) for j in range(3)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("scored")
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp / "cache"))
    cmd = [sys.executable, "-m", "hpe_bench", "-m", "debug=default", f"paths.output_dir={tmp / 'out'}",
           f"model={','.join(MODELS)}", f"trainer.precision={','.join(PRECISIONS)}", "logger=csv",
           "callbacks.prediction_images.num_images=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    jobs = {}
    for overrides in (tmp / "out").glob("multirun/*/*/*/.hydra/overrides.yaml"):
        chosen = dict(o.split("=", 1) for o in yaml.safe_load(overrides.read_text()) if "=" in o)
        jobs[chosen["model"], chosen["trainer.precision"]] = overrides.parent.parent
    assert len(jobs) == len(MODELS) * len(PRECISIONS), sorted(jobs)
    return jobs


def _matrices(df: pd.DataFrame, prefix: str) -> np.ndarray:
    return df[[f"{prefix}_{c}" for c in R_COLS]].to_numpy().reshape(-1, 3, 3)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_predictions_are_rotations_and_metrics_recompute(sweep, model, precision):
    run = sweep[model, precision]
    metrics = json.loads((run / "metrics.json").read_text())
    df = pd.read_parquet(run / "predictions.parquet")
    assert len(df) == metrics["num_samples"] == 20

    P, G = _matrices(df, "pred"), _matrices(df, "gt")
    assert all(df[f"pred_{c}"].dtype == np.float64 for c in R_COLS)
    assert np.abs(np.transpose(P, (0, 2, 1)) @ P - np.eye(3)).max() <= 1e-6
    assert np.allclose(np.linalg.det(P), 1.0, atol=1e-9)

    # geodesic: scipy's angle of R_gt^T R_pred; per-axis under the synthetic protocol's TRG rule: scipy 'yxz'
    geo = np.degrees((Rotation.from_matrix(G).inv() * Rotation.from_matrix(P)).magnitude())
    assert geo.mean() == pytest.approx(metrics["geodesic_deg"], abs=1e-4)
    assert metrics["euler_convention"] == "trg"
    d = np.abs(Rotation.from_matrix(P).as_euler("yxz", degrees=True) - Rotation.from_matrix(G).as_euler("yxz", degrees=True))
    for k, name in enumerate(("yaw_deg", "pitch_deg", "roll_deg")):
        assert d[:, k].mean() == pytest.approx(metrics[name], abs=1e-4), name
    assert d.mean() == pytest.approx(metrics["mae_r_deg"], abs=1e-4)

    has_t = df["pred_t_x"].notna().all()
    if model == "sixdrepnet":  # rotation only: no translation metric, and none made up
        assert not has_t and "tx_mm" not in metrics
        return
    assert has_t
    err_mm = np.abs(df[["pred_t_x", "pred_t_y", "pred_t_z"]].to_numpy() - df[["gt_t_x", "gt_t_y", "gt_t_z"]].to_numpy()) * 1e3
    for k, name in enumerate(("tx_mm", "ty_mm", "tz_mm")):
        assert err_mm[:, k].mean() == pytest.approx(metrics[name], abs=1e-4), name


@pytest.mark.slow
def test_score_run_rescores_every_run_to_the_same_numbers(sweep, tmp_path):
    """`hpe-bench score --run` accepts what the runs wrote (bf16-trained ones too) and gets their numbers."""
    from hpe_bench.score import main

    for (model, precision), run in sorted(sweep.items()):
        if precision != "bf16-mixed":
            continue
        out = tmp_path / model
        assert main(["--run", str(run), "--out", str(out)]) == 0
        rescored = json.loads(next(out.rglob("metrics.json")).read_text())
        original = json.loads((run / "metrics.json").read_text())
        assert rescored["geodesic_deg"] == pytest.approx(original["geodesic_deg"], abs=1e-6), model
