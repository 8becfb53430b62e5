"""The results index (hpe_bench/results/*.yaml): transcribed from the papers, tied to presets that compose,
naming only metrics the registry knows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hpe_bench.metrics.registry import METRICS
from hpe_bench.results import PAPERS, ResultsIndexError, load_all, load_paper, protocol_of

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAPER_TEXT = ROOT.parent / "shared" / "papers"
INDEX = load_all()
TABLES = [t for p in INDEX.values() for t in p.tables.values()]
PRESETS = sorted({r.preset for t in TABLES for r in t.rows if r.preset})


def test_both_papers_have_their_tables():
    assert set(INDEX) == set(PAPERS)
    assert {f"table{i}" for i in (1, 2, 3)} <= set(INDEX["opnet"].tables)
    assert {f"table{i}" for i in range(1, 10)} <= set(INDEX["trg"].tables)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: f"{t.paper}-{t.key}")
def test_columns_name_registry_metrics_and_data_protocols(table):
    data_options = {p.stem for p in (CONF / "data").glob("*.yaml")}
    for col in table.columns:
        assert col.metric in METRICS, f"{table.paper} {table.key}: {col.metric} is not in the metric registry"
        assert col.protocol in data_options, f"{table.paper} {table.key}: no conf/data/{col.protocol}.yaml"
        test_split = OmegaConf.load(CONF / "data" / f"{col.protocol}.yaml").get("test")
        assert test_split is not None, f"conf/data/{col.protocol}.yaml has no test split"


@pytest.mark.parametrize("preset", PRESETS)
def test_runnable_preset_composes(preset):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert cfg.experiment_name == preset  # table rows find their runs by this name
    assert protocol_of({"data": cfg.hydra.runtime.choices["data"]}) is not None


def _paper_lines(name: str) -> list[str]:
    path = PAPER_TEXT / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return [" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("table", [t for t in TABLES if t.pin], ids=lambda t: f"{t.paper}-{t.key}")
def test_published_values_are_lines_of_the_paper(table):
    """Every row's numbers, printed as the paper prints them (2 decimals, '-' for none), appear in order on
    one line of the paper text (the rows' labels are mangled by the text extraction, the numbers are not)."""
    lines = _paper_lines(INDEX[table.paper].source)
    for row in table.rows:
        if row.values is None:
            continue
        tokens = [row.printed.get(i, "-" if v is None else f"{v:.{table.digits}f}") for i, v in enumerate(row.values)]
        pattern = re.compile(r"(^|\s)" + r"\s".join(map(re.escape, tokens)) + r"$")
        assert any(pattern.search(line) for line in lines), f"{table.key} {row.name}: {' '.join(tokens)} not in text"


def test_pinned_numbers():
    """A few headline numbers by hand, from the papers' text."""
    opnet, trg = INDEX["opnet"].tables, INDEX["trg"].tables
    bl = next(r for r in opnet["table1"].rows if r.name == "OpNet BL")
    assert bl.preset == "opnet" and bl.values == pytest.approx((2.80, 4.22, 2.54, 3.19, 5.26))
    trg_star = next(r for r in trg["table4"].rows if r.preset == "trg")
    assert dict(zip((c.metric for c in trg["table4"].columns), trg_star.values))["add_mm"] == pytest.approx(29.46)
    t_pred = next(r for r in trg["table1"].rows if r.preset == "trg_t_prediction")
    assert t_pred.values[5] == pytest.approx(1700.0) and t_pred.printed[5] == "1.7K"
    assert all(r.values is None for r in trg["table8"].rows if r.preset != "trg")  # lost in the text extraction


def test_peer_rows_are_not_runnable_and_bad_files_name_their_key(tmp_path):
    assert all(not r.runnable for t in TABLES for r in t.rows if r.peer)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  t1:\n    columns: [{protocol: aflw2000, metric: mae_r_deg}]\n"
                   "    rows: [{name: x, peer: true, values: [1.0, 2.0]}]\n")
    with pytest.raises(ResultsIndexError, match=r"tables\.t1\.rows\[0\]\.values"):
        load_paper("bad", bad)


def test_protocol_of_metrics_files():
    assert protocol_of({"data": "mix_trg"}) == "arkitface"
    assert protocol_of({"data": "biwi_6dof"}) == "biwi_6dof"
    assert protocol_of({"data": "mix_trg", "protocol": "synthetic"}) == "synthetic"
    assert protocol_of({"data": "mix_trg"}, stem="biwi_6dof") == "biwi_6dof"  # metrics/biwi_6dof.json


def test_data_test_protocol_map_names_data_options():
    from hpe_bench.results import DATA_TEST_PROTOCOL

    options = {p.stem for p in (CONF / "data").glob("*.yaml")}
    assert set(DATA_TEST_PROTOCOL) <= options and set(DATA_TEST_PROTOCOL.values()) <= options
