"""`make table` paper tables: hpe_bench's mean ± standard error over seeds beside the published numbers."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from hpe_bench import paper_table as PT
from hpe_bench.results import load_paper
from hpe_bench.table import collect, main


def fake_run(root, name, record, overrides=(), extra_files=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "metrics.json").write_text(json.dumps(record))
    for rel, rec in (extra_files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(json.dumps(rec))
    return d


def opnet_runs(root):
    # OpNet BL (preset "opnet") over three seeds: MAE 3.0, 3.2, 3.4 -> mean 3.2, sample std 0.2,
    # standard error 0.2 / sqrt(3) = 0.1155; geodesic 5.0, 5.0, 5.6 -> mean 5.2, std 0.3464, se 0.2
    for seed, mae, geo in ((1, 3.0, 5.0), (2, 3.2, 5.0), (3, 3.4, 5.6)):
        fake_run(root, f"opnet/{seed}", {"experiment": "opnet", "data": "mix_opnet_bl", "seed": seed,
                                         "euler_convention": "opnet", "mae_r_deg": mae, "geodesic_deg": geo,
                                         "num_samples": 1969, "count_rotation": 1969},
                 [f"experiment=opnet", f"seed={seed}"])


def test_mean_standard_error_and_difference(tmp_path):
    opnet_runs(tmp_path)
    table = load_paper("opnet").tables["table2"]
    results = PT.fill(table, collect(tmp_path))
    bl = next(r for r in results if r.row.preset == "opnet")
    mae, geo = bl.cells
    assert mae.n == 3 and mae.mean == pytest.approx(3.2) and mae.se == pytest.approx(0.2 / math.sqrt(3))
    assert mae.diff == pytest.approx(3.2 - 3.19)
    assert geo.mean == pytest.approx(5.2) and geo.se == pytest.approx(0.2) and geo.diff == pytest.approx(-0.06)
    assert len(mae.run_dirs) == 3 and all("opnet" in d for d in mae.run_dirs)
    resnet = next(r for r in results if r.row.preset == "opnet_resnet18")
    assert resnet.n == 0 and all(c.mean is None for c in resnet.cells)  # a gap, not a zero

    md = PT.to_markdown(table, "OpNet", results)
    assert "| OpNet BL | published | 3.19 | 5.26 |" in md
    assert "|  | hpe_bench `opnet` (n=3) | 3.20 ± 0.12 | 5.20 ± 0.20 |" in md
    assert "|  | Δ | +0.01 | -0.06 |" in md
    assert "hpe_bench `opnet_resnet18`: no runs | — | — |" in md
    tex = PT.to_latex(table, "OpNet", results)
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"3.20 $\pm$ 0.12" in tex
    assert "ResNet18 - Landmarks" in tex


def test_protocols_from_retests_and_metrics_dir(tmp_path):
    """TRG Table 1 reads ARKitFace from the training run (data=mix_trg) and BIWI either from a re-test run of
    its checkpoint (data=biwi_6dof train=false ckpt_path=...) or from metrics/biwi_6dof.json."""
    base = {"experiment": "trg", "euler_convention": "trg"}
    fake_run(tmp_path, "trg/1", {**base, "data": "mix_trg", "seed": 1, "mae_r_deg": 1.0, "add_mm": 9.0},
             ["experiment=trg", "seed=1"])
    fake_run(tmp_path, "trg/1/test_biwi_6dof", {**base, "data": "biwi_6dof", "seed": 1, "mae_r_deg": 3.0},
             ["experiment=trg", "seed=1", "data=biwi_6dof", "train=false", "ckpt_path=trg/1/checkpoints/last.ckpt"])
    fake_run(tmp_path, "trg/2", {**base, "data": "mix_trg", "seed": 2, "mae_r_deg": 2.0, "add_mm": 8.0},
             ["experiment=trg", "seed=2"],
             extra_files={"metrics/biwi_6dof.json": {**base, "data": "mix_trg", "seed": 2, "mae_r_deg": 4.0}})
    table = load_paper("trg").tables["table1"]
    results = PT.fill(table, collect(tmp_path))
    trg = next(r for r in results if r.row.preset == "trg")
    by = {(c.protocol, c.metric): c for c in trg.cells}
    assert by["arkitface", "mae_r_deg"].mean == pytest.approx(1.5) and by["arkitface", "mae_r_deg"].n == 2
    assert by["biwi_6dof", "mae_r_deg"].mean == pytest.approx(3.5) and by["biwi_6dof", "mae_r_deg"].se == pytest.approx(0.5)
    assert by["arkitface", "dense_mean_mm"].mean is None and not trg.warnings
    md = PT.to_markdown(table, "TRG", results)
    assert "ARKitFace MAE_r" in md and "BIWI ADD" in md
    frame = PT.to_frame(table, results)
    cell = frame[(frame["preset"] == "trg") & (frame["protocol"] == "biwi_6dof") & (frame["metric"] == "mae_r_deg")]
    assert set(cell.iloc[0]["run_dirs"].split(";")) == {str(tmp_path / "trg/1/test_biwi_6dof"), str(tmp_path / "trg/2")}
    assert r"\multicolumn{4}{c}{ARKitFace}" in PT.to_latex(table, "TRG", results)


def test_protocol_substitution_and_other_configs_warned(tmp_path):
    for seed, geo in ((1, 40.0), (2, 42.0)):
        fake_run(tmp_path, f"mini/{seed}", {"experiment": "trg_iter1_single", "data": "synthetic", "seed": seed,
                                            "geodesic_deg": geo, "mae_r_deg": geo / 2},
                 ["experiment=trg_iter1_single", "data=synthetic", "trainer.max_steps=50", f"seed={seed}"])
    fake_run(tmp_path, "other/1", {"experiment": "trg_iter1_single", "data": "synthetic", "seed": 1,
                                   "mae_r_deg": 99.0}, ["experiment=trg_iter1_single", "trainer.max_steps=5"])
    table = load_paper("trg").tables["table1"]
    results = PT.fill(table, collect(tmp_path), {"arkitface": "synthetic"})
    row = next(r for r in results if r.row.preset == "trg_iter1_single")
    mae = next(c for c in row.cells if c.protocol == "arkitface" and c.metric == "mae_r_deg")
    assert mae.mean == pytest.approx(20.5) and mae.n == 2 and mae.source_protocol == "synthetic"
    assert row.config == "trainer.max_steps=50" and "trainer.max_steps=5" in row.warnings[0]


def test_make_table_cli_writes_every_format_and_integer_counts(tmp_path, capsys):
    opnet_runs(tmp_path / "runs")
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "table.md"), "--paper-dir", str(tmp_path / "tables")])
    printed = capsys.readouterr().out
    assert "| OpNet BL | published | 3.19 | 5.26 |" in printed  # tables with runs are printed
    for key in ("table1", "table2", "table3"):
        for suffix in ("md", "tex", "csv"):
            assert (tmp_path / "tables" / f"opnet_{key}.{suffix}").is_file()
    assert (tmp_path / "tables" / "trg_table9.md").is_file()  # tables without runs are written with gaps
    csv = pd.read_csv(tmp_path / "tables" / "opnet_table1.csv")
    assert len(csv) == 18 * 5 and csv["run_dirs"].fillna("").str.count(";").max() == 2
    generic = (tmp_path / "table.md").read_text()
    assert "| 1969 |" in generic and "1969.0" not in generic  # counts stay integers


def test_one_seed_counts_once(tmp_path):
    """A seed tested on BIWI twice (a re-test directory and metrics/biwi_6dof.json) enters the mean once."""
    base = {"experiment": "trg", "euler_convention": "trg", "seed": 1}
    fake_run(tmp_path, "trg/1", {**base, "data": "mix_trg", "mae_r_deg": 1.0}, ["seed=1"],
             extra_files={"metrics/biwi_6dof.json": {**base, "data": "mix_trg", "mae_r_deg": 3.0}})
    fake_run(tmp_path, "trg/1/test_biwi_6dof", {**base, "data": "biwi_6dof", "mae_r_deg": 5.0},
             ["seed=1", "data=biwi_6dof", "train=false"])
    results = PT.fill(load_paper("trg").tables["table8"], collect(tmp_path))
    trg = next(r for r in results if r.row.preset == "trg")
    assert trg.cells[0].n == 1 and trg.cells[0].mean == pytest.approx(3.0)  # the first by path
    assert any("seed(s) [1]" in w for w in trg.warnings)
