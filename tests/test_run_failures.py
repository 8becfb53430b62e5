"""What a long run meets (docs/running.md), through the real entry point: kill -9 and resume, a multirun with a
failing job, and user errors that stop before any run directory exists."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from hpe_bench.preflight import UserError, check_data_roots, resolve_ckpt_path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=default", "model.net.backbone=resnet10t", "logger=csv"]


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    for name in [k for k in env if k.startswith("HPE_") and k.endswith("_ROOT")] + ["HYDRA_FULL_ERROR"]:
        env.pop(name, None)  # the tests decide which datasets exist
    env.update(extra)
    return env


def _cmd(tmp_path: Path, *overrides: str) -> list[str]:
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: argparse wants flags before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    return [sys.executable, "-m", "hpe_bench", *flags, *TINY, f"paths.output_dir={tmp_path / 'out'}", *rest]


def run_cli(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(tmp_path, *overrides), cwd=ROOT, env=env or _env(tmp_path), capture_output=True,
                          text=True, timeout=600)


def global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


# ------------------------------------------------------------------ user errors: nothing created, no traceback
def test_missing_dataset_root_stops_before_the_run_directory(tmp_path):
    proc = run_cli(tmp_path, "model=trg", "data=arkitface")
    assert proc.returncode != 0
    assert "HPE_ARKITFACE_ROOT" in proc.stderr and "data.root" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists(), "a run directory (or W&B run) was created"
    # HYDRA_FULL_ERROR=1 still shows where it came from
    proc = run_cli(tmp_path, "model=trg", "data=arkitface", env=_env(tmp_path, HYDRA_FULL_ERROR="1"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "HPE_ARKITFACE_ROOT" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_config_value_that_does_not_resolve_stops_before_the_run_directory(tmp_path):
    proc = run_cli(tmp_path, "model.crop.size=${no_such_key}", f"ckpt_path={tmp_path / 'nothing.ckpt'}")
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_missing_ckpt_path_is_named_before_any_work(tmp_path):
    missing = tmp_path / "nothing.ckpt"
    proc = run_cli(tmp_path, f"ckpt_path={missing}")
    assert proc.returncode != 0 and str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# in-process checks of the same preflight (no subprocess: the suite stays short)
def compose_with(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=list(overrides))


def test_dataset_root_that_does_not_exist_names_path_and_variable(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_arkitface"
    monkeypatch.setenv("HPE_ARKITFACE_ROOT", str(missing))
    monkeypatch.delenv("HPE_300WLP_ROOT", raising=False)
    cfg = compose_with("model=trg", "data=arkitface")
    with pytest.raises(UserError, match="HPE_ARKITFACE_ROOT") as err:
        check_data_roots(cfg)
    assert str(missing) in str(err.value) and "data.root" in str(err.value)
    # a root that exists passes; only the stages the run executes are checked
    missing.mkdir()
    check_data_roots(cfg)
    with pytest.raises(UserError, match="HPE_300WLP_ROOT"):  # a mixture member names its own variable
        check_data_roots(compose_with("data=mix_trg", "test=false"))
    monkeypatch.delenv("HPE_ARKITFACE_ROOT")
    check_data_roots(compose_with("model=trg", "data=arkitface", "train=false", "test=false"))


def test_ckpt_path_that_is_no_checkpoint_or_last_without_one(tmp_path):
    notes = tmp_path / "notes.ckpt"
    notes.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a checkpoint") as err:
        resolve_ckpt_path(str(notes), tmp_path)
    assert str(notes) in str(err.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a Lightning checkpoint"):
        resolve_ckpt_path(str(tmp_path / "plain.pt"), tmp_path)
    with pytest.raises(UserError, match="last.ckpt"):
        resolve_ckpt_path("last", tmp_path / "run")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 7}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("last", tmp_path / "run") == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert resolve_ckpt_path(None, tmp_path) is None


# ------------------------------------------------------------------ kill -9, then resume in the same directory
@pytest.mark.slow
def test_kill_during_fit_then_resume_from_last_checkpoint(tmp_path):
    steps = ["trainer.max_steps=6", "callbacks.checkpoint.every_n_train_steps=2"]
    proc = subprocess.Popen(_cmd(tmp_path, *steps), cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = tmp_path / "out" / "runs" / "default"
    deadline = time.monotonic() + 300
    ckpt = None
    while proc.poll() is None and time.monotonic() < deadline:
        found = list(runs.glob("*/checkpoints/last.ckpt")) if runs.is_dir() else []
        if found:  # Lightning writes checkpoints atomically: an existing file is complete
            os.kill(proc.pid, signal.SIGKILL)
            ckpt = found[0]
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert ckpt is not None, f"no checkpoint before the run ended (exit {proc.returncode})"
    assert proc.returncode == -signal.SIGKILL
    run_dir = ckpt.parents[1]
    assert not (run_dir / "metrics.json").exists()
    saved = global_step(ckpt)
    assert 0 < saved < 6

    # the documented resume command: the run's directory and ckpt_path=last, with the run's overrides
    done = run_cli(tmp_path, *steps, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"training resumes at global step {saved}" in done.stdout + done.stderr
    assert global_step(run_dir / "checkpoints" / "last.ckpt") == 6
    assert [p.parent for p in (tmp_path / "out").rglob("metrics.json")] == [run_dir]
    assert [p.parent for p in (tmp_path / "out").rglob("predictions.parquet")] == [run_dir]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert len(info["resumes"]) == 1 and info["resumes"][0]["ckpt_path"].endswith("last.ckpt")
    assert not (run_dir / "failure.json").exists()


# ------------------------------------------------------------------ a multirun whose first job fails
@pytest.mark.slow
def test_multirun_finishes_other_jobs_and_reports_the_failed_one(tmp_path):
    # job 0: a negative learning rate (torch.optim raises when the optimizer is built); job 1 is fine
    proc = run_cli(tmp_path, "-m", "model.optimizer.lr=-1,0.001", "trainer.max_steps=1")
    assert proc.returncode != 0
    sweep = next((tmp_path / "out" / "multirun" / "default").iterdir())
    failed, ok = sweep / "0", sweep / "1"
    assert (ok / "metrics.json").is_file() and (ok / "predictions.parquet").is_file()
    assert not (failed / "metrics.json").exists()
    record = json.loads((failed / "failure.json").read_text())
    assert record["error"] == "ValueError" and "model.optimizer.lr=-1" in record["overrides"]
    assert "Traceback" in record["traceback"]
    assert "1 of 2 multirun jobs failed" in proc.stderr and str(failed) in proc.stderr
