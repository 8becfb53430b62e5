"""The protocol registry (hpe_bench/protocols/), runs tested on several protocols (test_on), re-testing a finished
run from its checkpoint (hpe-bench retest), and the checkpoint each metrics file names."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from hpe_bench.protocols import ProtocolError, get_protocol, protocol_card, protocol_for_data, registry
from hpe_bench.results import protocol_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=default", "model.net.backbone=resnet10t", "logger=none"]


def test_registry_pins_the_protocol_counts():
    """Counts from ../shared/reference/protocols.md and the papers (never from the code under test)."""
    reg = registry()
    assert {"aflw2000", "aflw2000_all", "biwi", "biwi_6dof", "biwi_70_30", "arkitface", "synthetic",
            "aflw2kmini"} <= set(reg)
    expected = {"aflw2000": 1969, "aflw2000_all": 2000, "biwi": 13219, "biwi_6dof": 15678, "arkitface": 184884,
                "aflw2kmini": 16}
    assert {k: reg[k].num_samples for k in expected} == expected
    rules = {"aflw2000": "opnet", "biwi": "opnet", "biwi_6dof": "trg", "arkitface": "trg", "biwi_70_30": "opnet"}
    assert {k: reg[k].euler_rule for k in rules} == rules
    split = reg["biwi_70_30"].split
    assert len(split["train"]) == 16 and len(split["test"]) == 8
    with pytest.raises(ProtocolError, match="unknown protocol 'biwi70'.*biwi_70_30"):
        get_protocol("biwi70")


def test_every_protocol_is_a_data_option_whose_rule_it_keeps():
    """Each entry names a conf/data option; where it adds no overrides its Euler rule is that option's."""
    for proto in registry().values():
        path = ROOT / "conf" / "data" / f"{proto.data}.yaml"
        assert path.is_file(), f"protocol {proto.name}: no data option {path}"
        if not proto.overrides:
            assert OmegaConf.load(path).euler_rule == proto.euler_rule, proto.name
        for option in proto.test_of:
            assert (ROOT / "conf" / "data" / f"{option}.yaml").is_file(), (proto.name, option)


def test_card_of_a_run_and_its_table_protocol():
    assert protocol_for_data("mix_trg").name == "arkitface"  # a training mixture tests on its benchmark
    assert protocol_for_data("aflw2000").name == "aflw2000"  # not aflw2000_all (that one adds overrides)
    card = protocol_card("synthetic", num_samples=20)
    assert card["name"] == "synthetic" and card["num_samples"] == 512 and card["complete"] is False
    assert protocol_card("aflw2kmini", num_samples=16)["complete"] is True
    assert protocol_card("my_data") == {"name": "my_data", "registered": False}
    assert protocol_of({"protocol": card, "data": "mix_trg"}) == "synthetic"
    assert protocol_of({"protocol": "arkitface"}) == "arkitface"  # older files: the name alone


def run_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp / "cache"))
    env.pop("HPE_AFLW2KMINI", None)  # roots come from test_roots / --root
    return subprocess.run([sys.executable, "-m", "hpe_bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_train_once_test_on_two_protocols_then_retest(tmp_path, shared_assets):
    """One run tests on two protocols, each under its own Euler rule and count; re-testing its checkpoint on one of
    them later reproduces the in-run numbers (the test used the final weights, which last.ckpt holds)."""
    proc = run_cli(tmp_path, *TINY, f"paths.output_dir={tmp_path / 'out'}", "test_on=[synthetic,aflw2kmini]",
                   f"+test_roots.aflw2kmini={shared_assets / 'aflw2kmini.h5'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = sorted((tmp_path / "out" / "runs" / "default").iterdir())
    assert not (run / "metrics.json").exists()  # test_on: one file per protocol
    synth = json.loads((run / "metrics" / "synthetic.json").read_text())
    assert synth["protocol"]["name"] == "synthetic" and synth["euler_convention"] == "trg"
    assert synth["num_samples"] == 20 and synth["protocol"]["complete"] is False  # debug: 20 of the 512
    assert synth["checkpoint"]["selection"] == "last" and synth["checkpoint"]["step"] == 2
    assert synth["checkpoint"]["path"].endswith("checkpoints/last.ckpt")
    assert len(pd.read_parquet(run / "predictions" / "synthetic.parquet")) == 20
    mini = json.loads((run / "metrics" / "aflw2kmini.json").read_text())
    assert mini["protocol"]["name"] == "aflw2kmini" and mini["euler_convention"] == "opnet"
    assert mini["num_samples"] == 16 and mini["protocol"]["complete"] is True and "tz_mm" not in mini
    assert len(pd.read_parquet(run / "predictions" / "aflw2kmini.parquet")) == 16

    # re-test the finished run from its checkpoint, into its own directory
    before = (run / ".hydra" / "overrides.yaml").read_text()
    proc = run_cli(tmp_path, "retest", str(run), "aflw2kmini",
                   "--root", f"aflw2kmini={shared_assets / 'aflw2kmini.h5'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = json.loads((run / "metrics" / "aflw2kmini.json").read_text())
    assert again["checkpoint"] == {"selection": "last", "step": 2,
                                   "path": str((run / "checkpoints" / "last.ckpt").resolve())}
    for key in ("geodesic_deg", "mae_r_deg", "yaw_deg"):
        assert again[key] == pytest.approx(mini[key], abs=1e-3), key
    assert again["num_samples"] == 16 and again["euler_convention"] == "opnet"
    assert json.loads((run / "metrics" / "synthetic.json").read_text()) == synth  # untouched
    assert (run / ".hydra" / "overrides.yaml").read_text() == before
    info = json.loads((run / "run_info.json").read_text())
    assert info["config"]["train"] is True and len(info["retests"]) == 1
    assert not list(run.rglob(".*.tmp"))


def test_retest_refuses_unknown_protocol_and_non_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hpe_bench", "retest", str(tmp_path), "synthetic"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no hpe_bench run directory" in proc.stderr
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    proc = subprocess.run([sys.executable, "-m", "hpe_bench", "retest", str(tmp_path), "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown protocol 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("preset, model, expected", [
    ("opnet_cross", "hpe_bench.models.opnet.OpNet", ["aflw2000", "biwi", "biwi_6dof", "arkitface"]),
    ("trg_cross", "hpe_bench.models.trg.TRG", ["arkitface", "biwi_6dof", "aflw2000", "biwi"])])
def test_cross_protocol_presets_compose(preset, model, expected):
    """Issue 13 item 5: each one command; every protocol it tests on is registered, with its own Euler rule."""
    from hpe_bench.export import compose_config
    cfg = compose_config([f"experiment={preset}"])
    assert list(cfg.test_on) == expected and cfg.model.net._target_ == model
    assert {get_protocol(p).euler_rule for p in cfg.test_on} == {"opnet", "trg"}


def test_checkpoint_selection_is_stated_and_never_test_selected(tmp_path):
    """Issue 11 item 7: metrics files say which weights they come from; a test-selected checkpoint is refused."""
    import torch

    from hpe_bench.preflight import UserError
    from hpe_bench.protocol_test import checkpoint_record

    def save(name, callbacks=None, step=7):
        path = tmp_path / name
        torch.save({"state_dict": {}, "global_step": step, "callbacks": callbacks or {}}, path)
        return path

    cfg = OmegaConf.create({"train": False})
    assert checkpoint_record(None, cfg, tmp_path, save("last.ckpt")) == {
        "selection": "last", "path": str(tmp_path / "last.ckpt"), "step": 7}
    assert checkpoint_record(None, cfg, tmp_path, save("swa.ckpt", step=9))["selection"] == "swa"
    key = "ModelCheckpoint{'monitor': 'val/geodesic_deg', 'mode': 'min', 'every_n_train_steps': 0}"
    best = tmp_path / "epoch=3.ckpt"
    rec = checkpoint_record(None, cfg, tmp_path, save(best.name, {key: {"monitor": "val/geodesic_deg",
                                                                        "best_model_path": str(best)}}))
    assert rec == {"selection": "val/geodesic_deg min", "path": str(best), "step": 7}
    bad = tmp_path / "best_test.ckpt"
    save(bad.name, {key.replace("val/", "test/"): {"monitor": "test/geodesic_deg", "best_model_path": str(bad)}})
    with pytest.raises(UserError, match="test metric"):
        checkpoint_record(None, cfg, tmp_path, bad)
    assert checkpoint_record(None, cfg, tmp_path, save("imported.ckpt"))["selection"] == "given"
    assert checkpoint_record(None, cfg, tmp_path, None) == {"selection": "untrained", "path": None, "step": 0}


def test_bad_test_on_stops_before_the_run_directory(tmp_path):
    """An unknown protocol, or one whose dataset root is missing, stops the command before any run directory."""
    env = dict(os.environ, HPE_BENCH_CACHE=str(tmp_path / "cache"))
    env.pop("HPE_BIWI_ROOT", None)
    for bad, message in (("test_on=[synthetic,biwi7030]", "unknown protocol(s) ['biwi7030']"),
                         ("test_on=[biwi_70_30]", "HPE_BIWI_ROOT")):
        proc = subprocess.run([sys.executable, "-m", "hpe_bench", *TINY, f"paths.output_dir={tmp_path / 'out'}", bad],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
