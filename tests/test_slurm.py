"""A paper table on a real SLURM (issue 21): a single-node cluster on this machine (scripts/single_node_slurm.sh;
.ci/run starts it), the grid command submitting through Hydra's submitit launcher, failures, requeue, scancel.

The ``slurm`` fixture finds slurmctld/slurmd/sbatch and starts the cluster (idempotent); where they are absent or
it cannot start (not root, no apt) every test here skips with the reason. The jobs are tiny (debug=default on the
synthetic set, one CPU each), so the whole file takes a few minutes at most on 2 cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real jobs on a real scheduler (`make test-fast` leaves them out)
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "single_node_slurm.sh"
# one CPU, 2 GB, 10 minutes per job: fits the single node (2 CPUs) twice
LAUNCH = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
TINY = ["debug=default", "data=synthetic", "logger=none", "callbacks=none"]
# OpNet Table 2 (column protocol AFLW2000, tested here on the synthetic set), rows BL and "- NLL"
GRID = [sys.executable, "-m", "hpe_bench.grid", "opnet", "table2", "--launcher", "slurm",
        "--protocol", "aflw2000=synthetic"]


def _find(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/bin")
                                       if (p := Path(d) / name).is_file()), None)


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """A running single-node SLURM: started by scripts/single_node_slurm.sh where slurmctld and sbatch exist."""
    missing = [n for n in ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue") if _find(n) is None]
    if missing:
        pytest.skip(f"no SLURM on this machine ({', '.join(missing)} not found); `make slurm` (as root) installs "
                    f"slurm-wlm + munge and starts a single-node cluster")
    try:
        proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/single_node_slurm.sh start did not finish in 240 s")
    if proc.returncode != 0:
        pytest.skip(f"the single-node SLURM did not start: {proc.stderr.strip()[-800:]}")
    return {"sbatch": _find("sbatch"), "scontrol": _find("scontrol"), "squeue": _find("squeue")}


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", WANDB_SILENT="true", PYTHONPATH=str(ROOT),
                HPE_BENCH_CACHE=str(ROOT / ".cache" / "hpe_bench"))


def _run(cmd: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _show(proc) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _job_ids(root: Path) -> list[str]:
    """The SLURM jobs that ran (``<array>_<task>``, or ``<id>`` for a lone job): submitit's folders with a log."""
    sub = root / ".submitit"
    return sorted(p.name for p in sub.iterdir() if list(p.glob("*_log.out"))) if sub.is_dir() else []


def test_debug_grid_on_slurm_failure_resubmit_and_table(slurm, tmp_path):
    """2 rows x 2 seeds submitted by the grid command; one job fails (its metrics folder is a file), the others
    finish; run again, only that job is resubmitted; then the paper table shows the 2 x 2 cells."""
    root = tmp_path / "grid"
    blocker = root / "opnet_no_nll" / "seed2" / "metrics"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")  # metrics/<protocol>.json cannot be written: that job fails after training
    cmd = [*GRID, "--only", "opnet", "opnet_no_nll", "--seeds", "1,2", "--root", str(root), *TINY, *LAUNCH]
    first = _run(cmd, tmp_path)
    assert first.returncode == 1, _show(first)
    assert "4 jobs: 3 done, 1 failed" in first.stdout, _show(first)
    failure = json.loads((root / "opnet_no_nll" / "seed2" / "failure.json").read_text())
    assert failure["error"] and "seed=2" in failure["overrides"]
    done = sorted(str(p.relative_to(root)) for p in root.rglob("metrics/synthetic.json"))
    assert done == ["opnet/seed1/metrics/synthetic.json", "opnet/seed2/metrics/synthetic.json",
                    "opnet_no_nll/seed1/metrics/synthetic.json"]
    assert len(_job_ids(root)) == 4  # one SLURM job (array task) each

    blocker.unlink()
    again = _run(cmd, tmp_path)
    assert again.returncode == 0, _show(again)
    assert "4 jobs: 4 done" in again.stdout and "experiment=opnet_no_nll seed=2 " in again.stdout, _show(again)
    assert len(_job_ids(root)) == 5  # only the failed job was submitted again
    assert not (root / "opnet_no_nll" / "seed2" / "failure.json").exists()
    assert not list(root.rglob(".*.tmp"))

    table = _run([sys.executable, "-m", "hpe_bench.table", str(root), "--out", str(root / "table.md"),
                  "--paper-dir", str(root / "tables"), "--protocol", "aflw2000=synthetic"], tmp_path)
    assert table.returncode == 0, _show(table)
    paper = (root / "tables" / "opnet_table2.md").read_text()
    for preset in ("opnet", "opnet_no_nll"):  # each row's cells: mean ± s.e. over the 2 seeds
        line = next((ln for ln in paper.splitlines() if f"hpe_bench `{preset}` (n=2)" in ln), None)
        assert line is not None and line.count("±") == 2, paper  # MAE and Geo. columns


def _step(path: Path) -> int:
    import torch
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _squeue_state(slurm, job: str) -> str:
    out = subprocess.run([slurm["squeue"], "--noheader", "--states=all", "--format=%T", f"--jobs={job}"],
                         capture_output=True, text=True, timeout=60).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def _state_dict(path: Path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(slurm, tmp_path):
    """``scontrol requeue`` while a job trains: it resumes from last.ckpt in its directory and ends with one
    metrics file per protocol, one W&B run id, and the weights of an uninterrupted run of the seed (max abs
    difference <= 1e-5: float32 CPU kernels). Exact resumption needs what the checkpoint holds: last.ckpt at epoch
    ends (3 steps of 8 of the 24 debug samples; Lightning restarts an epoch's loader from its first batch), no
    augmentation and no dropout (their draws come from the global random state, which it does not hold)."""
    steps = ["trainer.max_steps=60", "callbacks.checkpoint.every_n_train_steps=3", "+trainer.limit_val_batches=0",
             "augment=none", "model.net.dropout=0", "logger=wandb", "~callbacks.prediction_images"]
    args = ["--only", "opnet", "--seeds", "1", "debug=default", "data=synthetic", *steps, *LAUNCH]
    requeued, plain = tmp_path / "requeued", tmp_path / "plain"
    env = _env(tmp_path)
    procs = [subprocess.Popen([*GRID, "--root", str(r), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (requeued, plain)]
    run_dir = requeued / "opnet" / "seed1"
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint before the job ended"
        time.sleep(0.2)
    (job,) = _job_ids(requeued)
    saved = _step(run_dir / "checkpoints" / "last.ckpt")
    req = subprocess.run([slurm["scontrol"], "requeue", job], capture_output=True, text=True, timeout=60)
    assert req.returncode == 0, req.stderr
    # SLURM holds a requeued batch job ~2 min (its begin time); let it start as soon as it is pending again
    pending_by = time.monotonic() + 60
    while (state := _squeue_state(slurm, job)) != "PENDING":
        assert time.monotonic() < pending_by, f"requeued job {job} not pending again: {state}"
        time.sleep(0.2)
    subprocess.run([slurm["scontrol"], "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=60)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-5000:] + outs[1][-3000:]

    info = json.loads((run_dir / "run_info.json").read_text())
    assert [r.get("slurm_restart_count") for r in info.get("resumes", [])] == [1], info.get("resumes")
    log = "".join(p.read_text() for p in (requeued / ".submitit").glob("*/*_log.*"))
    assert "requeued SLURM job (restart 1): resuming from" in log and f"training resumes at global step" in log
    assert 0 < saved < 60
    assert [p.name for p in (run_dir / "metrics").iterdir()] == ["synthetic.json"]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "failure.json").exists()
    wandb_id = json.loads((run_dir / "wandb_id.json").read_text())["id"]
    runs = list((run_dir / "wandb").glob("offline-run-*")) if (run_dir / "wandb").is_dir() else []
    assert runs and all(p.name.endswith(wandb_id) for p in runs), (wandb_id, runs)  # both starts: one W&B run
    assert len(runs) == 2  # it did start twice

    a = _state_dict(run_dir / "checkpoints" / "last.ckpt")
    b = _state_dict(plain / "opnet" / "seed1" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    ma = json.loads((run_dir / "metrics" / "synthetic.json").read_text())
    mb = json.loads((plain / "opnet" / "seed1" / "metrics" / "synthetic.json").read_text())
    assert ma["checkpoint"]["step"] == mb["checkpoint"]["step"] == 60


def test_scancel_of_the_array_leaves_no_half_written_result(slurm, tmp_path):
    """``scancel`` of a table's whole job array while it trains: the grid ends (the cancelled jobs are seen to
    end although sacct has no database here), reports them failed, and no result file is half written."""
    root = tmp_path / "cancel"
    cmd = [*GRID, "--only", "opnet", "opnet_no_nll", "--seeds", "1", "--root", str(root), "debug=default",
           "data=synthetic", "logger=none", "trainer.max_steps=600", "callbacks.checkpoint.every_n_train_steps=3",
           "+trainer.limit_val_batches=0",
           "~callbacks.prediction_images", *LAUNCH]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 300
    while not list(root.glob("*/seed1/checkpoints/last.ckpt")):
        assert time.monotonic() < deadline and proc.poll() is None, "no job trained before the grid ended"
        time.sleep(0.2)
    arrays = {j.split("_")[0] for j in _job_ids(root)}
    assert len(arrays) == 1  # one multirun, one array
    cancel = subprocess.run(["scancel", *arrays], capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0, cancel.stderr
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "2 jobs: 2 failed" in out, out[-5000:]
    for run in ("opnet", "opnet_no_nll"):
        run_dir = root / run / "seed1"
        assert not list(run_dir.glob("metrics/*")) and not list(run_dir.glob("predictions/*")), run
    assert not list(root.rglob(".*.tmp")) and not list(root.rglob("*.tmp"))
    assert json.loads((root / "opnet" / "seed1" / "run_info.json").read_text())["seed"] == 1  # complete files only


def test_one_job_with_two_tasks_ddp_tests_every_sample_once(slurm, tmp_path):
    """One SLURM job, 2 tasks: DDP over 2 CPU processes (gloo) set up from SLURM's variables by Lightning; the
    test split (21 samples: not a multiple of 2) is scored exactly once per sample."""
    sweep = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "hpe_bench", "-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.sync_batchnorm=false",
           "debug=default", "model.net.backbone=resnet10t", "logger=none", "callbacks=none", "data.test.num_samples=21",
           "data.batch_size=4", f"hydra.sweep.dir={sweep}", *LAUNCH]
    proc = _run(cmd, tmp_path)
    assert proc.returncode == 0, _show(proc)
    (metrics,) = sweep.rglob("metrics.json")
    assert json.loads(metrics.read_text())["num_samples"] == 21
    import pandas as pd
    ids = pd.read_parquet(metrics.parent / "predictions.parquet")["sample_id"]
    assert len(ids) == 21 and ids.is_unique
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "MEMBER: 1/2" in logs and "MEMBER: 2/2" in logs, logs[-3000:]  # Lightning's DDP ranks, one per task
