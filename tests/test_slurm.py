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
