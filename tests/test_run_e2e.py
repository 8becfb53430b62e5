"""A tiny end-to-end run of `python -m hpe_bench` with overrides, and the run-output contract."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpe_bench import geometry as G

ROOT = Path(__file__).resolve().parents[1]
# conf/debug/default.yaml (+ conf/debug/data/default_synthetic.yaml): 24/8/20 synthetic images of 128 px, batch 8,
# no workers, 2 CPU steps, 64 px crop, 4 prediction images; the lightest trunk of the default model on top.
TINY = ["debug=default", "model.net.backbone=resnet10t"]


def run_cli(tmp_path: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: argparse wants flags before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "hpe_bench", *flags, *TINY, f"paths.output_dir={tmp_path / 'out'}", *rest]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_dir(tmp_path: Path, name: str = "default") -> Path:
    dirs = sorted((tmp_path / "out" / "runs" / name).iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    proc = run_cli(tmp, "seed=7", "logger=default")
    return tmp, run_dir(tmp), proc


@pytest.mark.slow
def test_outputs_contract(tiny_run):
    _, out, proc = tiny_run
    assert "geodesic_deg" in proc.stdout  # the metric table is printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("geodesic_deg", "mae_r_deg", "yaw_deg", "pitch_deg", "roll_deg", "tx_mm", "ty_mm", "tz_mm",
                "mae_t_mm", "add_mm", "num_samples", "euler_convention", "model", "data", "loss", "seed",
                "experiment"):
        assert key in metrics, key
    assert metrics["num_samples"] == 20 and metrics["seed"] == 7
    assert metrics["model"] == "direct_regression" and metrics["data"] == "synthetic"
    assert metrics["euler_convention"] == "trg"
    assert "geodesic_deg" in metrics["mean_pose"]
    # the protocol card (hpe_bench/protocols/synthetic.yaml) and the weights the numbers come from
    assert metrics["protocol"]["name"] == "synthetic" and metrics["protocol"]["num_samples"] == 512
    assert metrics["protocol"]["complete"] is False  # debug=default tests 20 of the protocol's 512
    assert metrics["checkpoint"]["selection"] == "last" and metrics["checkpoint"]["step"] == 2

    df = pd.read_parquet(out / "predictions.parquet")
    assert len(df) == 20 and df["sample_id"].is_unique
    cols = [f"{p}_R_{i}{j}" for p in ("pred", "gt") for i in range(3) for j in range(3)]
    cols += [f"{p}_t_{a}" for p in ("pred", "gt") for a in "xyz"]
    assert set(cols + ["sample_id", "dataset"]) <= set(df.columns)
    # Any metric can be recomputed from the file alone: the geodesic error, the translation error.
    Rp = torch.tensor(df[[f"pred_R_{i}{j}" for i in range(3) for j in range(3)]].to_numpy()).view(-1, 3, 3)
    Rg = torch.tensor(df[[f"gt_R_{i}{j}" for i in range(3) for j in range(3)]].to_numpy()).view(-1, 3, 3)
    geo = torch.rad2deg(G.geodesic_angle(Rp, Rg)).mean().item()
    assert geo == pytest.approx(metrics["geodesic_deg"], rel=1e-4, abs=1e-4)
    tz = (df["pred_t_z"] - df["gt_t_z"]).abs().mean() * 1000
    assert tz == pytest.approx(metrics["tz_mm"], rel=1e-4)

    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 7 and "commit" in info["git"] and info["config"]["seed"] == 7
    assert (out / ".hydra" / "config.yaml").is_file()
    assert (out / "test_predictions.png").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    assert any((out / "wandb").glob("offline-run-*")), "W&B offline run directory missing"
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_same_seed_same_predictions(tiny_run):
    tmp, out, _ = tiny_run
    tmp2 = tmp / "again"
    run_cli(tmp2, "seed=7", "logger=none")
    a = pd.read_parquet(out / "predictions.parquet")
    b = pd.read_parquet(run_dir(tmp2) / "predictions.parquet")
    np.testing.assert_allclose(a["pred_R_00"], b["pred_R_00"], atol=1e-5)


@pytest.mark.slow
def test_unwritable_output_dir_is_reported(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    proc = run_cli(tmp_path, f"hydra.run.dir={blocker}/run", "logger=none", check=False)
    assert proc.returncode != 0
    assert str(blocker) in proc.stderr + proc.stdout


def test_unknown_option_fails_fast_with_its_name(tmp_path):
    proc = run_cli(tmp_path, "data=no_such_dataset", check=False)
    assert proc.returncode != 0
    assert "no_such_dataset" in proc.stderr and "data" in proc.stderr


@pytest.mark.slow
def test_multirun_grid_writes_one_run_per_job(tmp_path):
    run_cli(tmp_path, "-m", "seed=1,2", "logger=none", "trainer.max_steps=1")
    sweeps = list((tmp_path / "out" / "multirun" / "default").iterdir())
    assert len(sweeps) == 1
    metrics = sorted(sweeps[0].glob("*/metrics.json"))
    assert len(metrics) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in metrics) == [1, 2]


@pytest.mark.slow
def test_two_process_evaluation_counts_every_sample_once(tmp_path):
    """DDP on 2 CPU processes (gloo) with an odd test set: no padding duplicates, no drops."""
    run_cli(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=false",
            "data.test.num_samples=21", "data.batch_size=4", "logger=none")
    out = run_dir(tmp_path)
    df = pd.read_parquet(out / "predictions.parquet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(df) == 21 and df["sample_id"].is_unique
    assert metrics["num_samples"] == 21 and metrics["count_rotation"] == 21 and metrics["count_translation"] == 21


def test_console_script_composes_from_any_directory(tmp_path):
    """`hpe-bench` (installed by `make setup`) finds conf/ when called outside the checkout."""
    script = Path(sys.executable).parent / "hpe-bench"
    assert script.exists(), "console script missing: run `make setup` (pip install -e .)"
    proc = subprocess.run([str(script), "--cfg", "job", "model=direct_regression"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "direct_regression" in proc.stdout and "experiment_name" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("seconds,steps", [(1, 6), (100_000, 12)])
def test_demo_time_budget_fits_the_run_length(tmp_path, seconds, steps):
    """callbacks.TimeBudget: after 2 warm-up and 4 timed steps the run length is what fits the budget (none left:
    it stops right there; plenty: the configured 12), the LR schedule ends annealed, and metrics.json says so."""
    proc = run_cli(tmp_path, "experiment=demo", "trainer.max_steps=12", f"callbacks.time_budget.seconds={seconds}",
                   "callbacks.time_budget.warmup_steps=2", "callbacks.time_budget.measure_steps=4",
                   "trainer.check_val_every_n_epoch=1000", "trainer.precision=32-true")
    out = run_dir(tmp_path, "demo")
    record = json.loads((out / "metrics.json").read_text())
    assert record["checkpoint"]["step"] == steps and record["num_samples"] == 20
    plan = record["time_budget"]
    assert plan["planned_at_step"] == 6 and plan["max_steps"] == steps and plan["configured_max_steps"] == 12
    assert plan["seconds_per_step"] > 0 and "time budget (measured)" in proc.stdout + proc.stderr
    # the one-cycle schedule was rebuilt for `steps`: its learning rate is torch's own OneCycleLR of that length
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["lr_schedulers"][0]
    assert saved["total_steps"] == steps and saved["last_epoch"] >= steps - 1
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, pct_start=0.05, total_steps=steps)
    for _ in range(saved["last_epoch"]):
        opt.step()
        ref.step()
    assert saved["_last_lr"][0] == pytest.approx(ref.get_last_lr()[0], rel=1e-9)


@pytest.mark.slow
def test_demo_time_limit_stops_training_and_still_tests(tmp_path):
    """The demo's safety net (trainer.max_time): training stops at the limit, the run tests the weights it has,
    says so, and metrics.json records how far it got."""
    proc = run_cli(tmp_path, "experiment=demo", "trainer.max_steps=100000", "trainer.max_time=00:00:00:02",
                   "trainer.check_val_every_n_epoch=1000")
    record = json.loads((run_dir(tmp_path, "demo") / "metrics.json").read_text())
    assert 0 < record["checkpoint"]["step"] < 100000
    assert record["num_samples"] == 20  # the whole (debug) test split was still scored
    assert "training stopped at step" in proc.stdout + proc.stderr
