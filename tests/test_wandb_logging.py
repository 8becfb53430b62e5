"""W&B and CSV logging of test results (hpe_bench/wandb_logging.py, docs/wandb.md).

The end-to-end test reads the offline W&B run file itself: wandb >= 0.2x no longer ships a Python reader of
``run-<id>.wandb`` (its core service, written in Go, reads it), and an offline run writes no
``wandb-summary.json``. The file is W&B's documented LevelDB-log framing of protobuf ``Record``s
(7-byte file header ``:W&B`` + magic + version, 32 KiB blocks, 7-byte chunk headers crc/length/type),
parsed below with wandb's own protobuf classes.
"""
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpe_bench import wandb_logging as WL
from hpe_bench.metrics.registry import METRICS

from test_run_e2e import run_cli

BLOCK, CHUNK_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf ``Record``s of an offline ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        parts = chunk if kind in (FULL, FIRST) else parts + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def read_offline_run(path: Path) -> dict:
    """History keys, summary, run record (group, tags) and metric definitions of an offline W&B run file."""
    out = {"history": set(), "summary": {}, "run": None, "metrics": {}}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {"/".join(i.nested_key) or i.key for i in rec.history.item}
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "run":
            out["run"] = rec.run
        elif kind == "metric" and rec.metric.name:
            out["metrics"][rec.metric.name] = rec.metric
    return out


RECORD = {"geodesic_deg": 3.5, "mae_r_deg": 2.0, "tx_mm": float("nan"), "count_rotation": 20.0, "num_samples": 20,
          "seed": 7, "experiment": "demo", "euler_convention": "trg", "mean_pose": {"geodesic_deg": 40.0}}


def test_test_metrics_keys_every_registered_metric_with_its_protocol():
    got = WL.test_metrics("biwi_6dof", RECORD)
    assert got == {"test/biwi_6dof/geodesic_deg": 3.5, "test/biwi_6dof/mae_r_deg": 2.0,
                   "test/biwi_6dof/count_rotation": 20, "test/biwi_6dof/num_samples": 20,
                   "test/biwi_6dof/mean_pose/geodesic_deg": 40.0}  # NaN and provenance keys left out
    assert isinstance(got["test/biwi_6dof/count_rotation"], int)


def test_run_tags_name_the_options_and_seed():
    assert WL.run_tags({"model": "trg", "data": "synthetic", "loss": None}, 3) == ["model=trg", "data=synthetic",
                                                                                   "seed=3"]


def test_test_metrics_reach_the_csv_log(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    class Trainer:  # what log_test reads of a Lightning trainer
        is_global_zero, global_step, callbacks = True, 5, []
        loggers = [CSVLogger(tmp_path, name="csv", version="")]

    frame = pd.DataFrame({"sample_id": ["a", "b"], "geodesic_deg": [1.0, np.nan]})
    WL.log_test(Trainer(), "synthetic", RECORD, frame)
    csv = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert csv["test/synthetic/geodesic_deg"].iloc[-1] == pytest.approx(3.5)
    assert csv["step"].iloc[-1] == 5


@pytest.mark.slow
def test_offline_wandb_runs_of_a_multirun_hold_every_test_metric(tmp_path):
    """Each job of `-m seed=1,2` is its own offline W&B run (group = experiment, tags = options and seed),
    holding test/<protocol>/<metric> in history and summary for every metric of its metrics.json, the
    val/<metric> summaries by the metric's direction, the samples table and the error histograms."""
    run_cli(tmp_path, "-m", "seed=1,2", "logger=default", "trainer.max_steps=1")
    jobs = sorted(p.parent for p in (tmp_path / "out" / "multirun").rglob("metrics.json"))
    assert len(jobs) == 2
    ids = set()
    for job in jobs:
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, f"{job}: expected one W&B run, got {files}"
        wb = read_offline_run(files[0])
        metrics = json.loads((job / "metrics.json").read_text())
        protocol = "synthetic"
        expected = {f"test/{protocol}/{k}" for k in metrics if k in METRICS}
        assert len(expected) >= 10
        assert expected <= wb["history"], sorted(expected - wb["history"])
        for key in expected:
            name = key.rsplit("/", 1)[1]
            assert wb["summary"][key] == pytest.approx(metrics[name], rel=1e-6), key
        assert f"test/{protocol}/samples/_type" in wb["history"]             # the per-sample table
        assert f"test/{protocol}/errors/geodesic_deg/bins" in wb["history"]   # an error histogram
        assert wb["run"].run_group == "default"
        assert set(wb["run"].tags) == {"model=direct_regression", "data=synthetic", "loss=direct_regression",
                                       f"seed={metrics['seed']}"}
        ids.add(wb["run"].run_id)
        for name, spec in METRICS.items():
            if not spec.is_count:
                summary = wb["metrics"][f"val/{name}"].summary
                assert (summary.min, summary.max) == (spec.lower_is_better, not spec.lower_is_better), name
        table = pd.read_csv(job / "csv" / "metrics.csv")
        assert table[f"test/{protocol}/geodesic_deg"].dropna().iloc[-1] == pytest.approx(metrics["geodesic_deg"])
    assert len(ids) == 2
