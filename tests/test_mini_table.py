"""The miniature paper table users can run here (README, experiments/mini_opnet_table2.sh), at test size:
the real script, 2 seeds of one row with a few steps, then the table beside the published column and the
figures from its checkpoints. The full miniature (3 rows, 250 steps) is `make mini`."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpe_bench import figures

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.max_steps=2", "model.total_samples=64", "data.train.num_samples=32",
        "data.val.num_samples=8", "data.test.num_samples=16", "data.train.image_size=128", "logger=csv"]


@pytest.mark.slow
def test_tiny_miniature_renders_the_table_and_figures(tmp_path):
    env = dict(os.environ, MINI_ROOT=str(tmp_path / "mini"), HPE_BENCH_CACHE=str(tmp_path / "cache"),
               WANDB_MODE="offline", HF_HUB_OFFLINE="1", PY=sys.executable, MINI_ROWS="opnet")
    proc = subprocess.run([str(ROOT / "experiments" / "mini_opnet_table2.sh"), *TINY], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 jobs: 2 done" in proc.stdout
    md = (tmp_path / "mini" / "tables" / "opnet_table2.md").read_text()
    assert "| OpNet BL | published | 3.19 | 5.26 |" in md            # the published column, from the index
    assert "hpe_bench `opnet` (n=2)" in md and "±" in md             # mean ± standard error over the 2 seeds
    assert "hpe_bench `opnet_resnet18`: no runs" in md               # rows not run are gaps
    assert "Euler rule" not in md  # scored under the OpNet rule, as the paper's AFLW2000-3D column (euler_rule=opnet)
    cells = pd.read_csv(tmp_path / "mini" / "tables" / "opnet_table2.csv")
    bl = cells[(cells["preset"] == "opnet") & (cells["metric"] == "geodesic_deg")].iloc[0]
    assert bl["n"] == 2 and bl["source_protocol"] == "synthetic" and bl["published"] == pytest.approx(5.26)
    assert sorted(Path(d).name for d in bl["run_dirs"].split(";")) == ["seed1", "seed2"]  # the runs behind it

    status = figures.make_all(tmp_path / "mini", tmp_path / "figs", noise_limit=4, draws=2, sigmas=(0, 32),
                              worst_n=4, translation_limit=16)
    assert status.get("noise") == "ok" and status.get("uncertainty") == "ok", status
    assert list((tmp_path / "figs").rglob("*.png")) and list((tmp_path / "figs").rglob("*.pdf"))
