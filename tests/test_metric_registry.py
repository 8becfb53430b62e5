"""The metric registry is the one list of metrics: construction, metrics.json, the printed table, `make table`."""
from __future__ import annotations

import json
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from hpe_bench import table
from hpe_bench.metrics import build_metrics, compute_flat
from hpe_bench.metrics.base import SumCountMetric
from hpe_bench.metrics.registry import (
    COUNT_UNIT, METRICS, NUM_SAMPLES, MetricSpec, computed_keys, format_value, register_metric,
)
from hpe_bench.outputs import write_json
from hpe_bench.run import format_table, metrics_record
from hpe_bench.schema import collate


def sample(t: tuple[float, float, float]) -> dict:
    return {"image": np.zeros((2, 2, 3), np.uint8), "box": np.array([0, 0, 2, 2], np.float32), "dataset": "test",
            "sample_id": "0", "topology": "", "R": np.eye(3, dtype=np.float32), "t": np.asarray(t, np.float32)}


def test_registry_and_collection_hold_the_same_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compute() before update() warns; every key is still returned
        keys = set(compute_flat(build_metrics("trg")))
    assert keys == set(computed_keys())
    assert set(METRICS) == keys | {NUM_SAMPLES}  # num_samples is counted by the module, not by a Metric
    for key in ("dense_mean_mm", "dense_median_mm", "face_size_mm2", "nme2d_yaw_60_90", "count_nme2d_yaw_0_30"):
        assert key in METRICS, key


def test_every_value_names_a_registered_count_and_counts_are_integers():
    for name, spec in METRICS.items():
        assert spec.name == name
        if spec.is_count:
            assert spec.digits == 0 and spec.count is None, name
        else:
            assert METRICS[spec.count].unit == COUNT_UNIT, name
            assert spec.needs, name
    assert format_value("num_samples", 20.0) == "20" and format_value("count_rotation", 3) == "3"
    assert format_value("geodesic_deg", 1.23456) == "1.23" and format_value("nme2d", 0.0351234) == "0.0351"


def test_registered_order_is_metrics_json_order():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = list(compute_flat(build_metrics("trg")))
    assert keys == [k for k in METRICS if k in keys]
    assert keys[:2] == ["geodesic_deg", "mae_r_deg"]


class TranslationNormMetric(SumCountMetric):
    """| ||t_pred|| - ||t_gt|| | in mm: a metric that exists only in this test."""

    keys = ("t_norm_mm",)
    count_name = "count_t_norm"

    def errors(self, pred: Mapping[str, Any], batch: Mapping[str, Any]):
        valid = batch["has_t"].bool() & ("t" in pred)
        err = (pred["t"].double().norm(dim=-1) - batch["t"].double().norm(dim=-1)).abs() * 1e3
        return {"t_norm_mm": err}, valid


@pytest.fixture
def extra_metric():
    """Register the test metric (its value and its count); restore the registry afterwards."""
    before = dict(METRICS)
    register_metric(MetricSpec("t_norm_mm", "mm", ("t",), digits=1, count="count_t_norm",
                               metric=TranslationNormMetric, description="distance error"))
    register_metric(MetricSpec("count_t_norm", COUNT_UNIT, (), lower_is_better=False, digits=0,
                               metric=TranslationNormMetric))
    yield
    METRICS.clear()
    METRICS.update(before)


def test_a_registered_metric_reaches_metrics_json_and_both_tables(extra_metric, tmp_path):
    with pytest.raises(ValueError, match="t_norm_mm"):
        register_metric(METRICS["t_norm_mm"])  # a name is registered once
    # two samples: |t| = 1.000 m vs predicted 1.002 m (2 mm); 0.5 m vs 0.5 m (0 mm) -> mean 1 mm over 2 samples
    batch = collate([sample((0.0, 0.0, 1.0)), sample((0.0, 0.3, 0.4))])
    pred = {"R": torch.eye(3).expand(2, 3, 3), "t": torch.tensor([[0.0, 0.0, 1.002], [0.0, 0.4, 0.3]])}
    collection = build_metrics("trg")
    collection.update(pred, batch)
    flat = compute_flat(collection)
    assert flat["t_norm_mm"] == pytest.approx(1.0, abs=1e-3) and flat["count_t_norm"] == 2
    assert list(flat)[-2:] == ["t_norm_mm", "count_t_norm"]  # registry order

    cfg = OmegaConf.create({"seed": 3, "experiment_name": "exp"})
    flat[NUM_SAMPLES] = 2
    record = metrics_record(cfg, {"metrics": flat, "mean_pose": flat}, "trg")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    write_json(run_dir / "metrics.json", record)
    assert json.loads((run_dir / "metrics.json").read_text())["t_norm_mm"] == pytest.approx(1.0, abs=1e-3)

    printed = format_table(record)
    line = next(ln for ln in printed.splitlines() if ln.startswith("t_norm_mm"))
    assert line.split()[1:] == ["mm", "1.0", "1.0"]
    assert "count_t_norm" not in printed  # counts are not rows of the metric table
    assert printed.splitlines()[-2].split() == ["num_samples", "2"]

    runs = table.collect(tmp_path)
    assert runs.loc[0, "t_norm_mm"] == pytest.approx(1.0, abs=1e-3)
    markdown = table.to_markdown(table.summarise(runs))
    header, _, row = markdown.splitlines()
    cells = dict(zip((c.strip() for c in header.strip("|").split("|")), (c.strip() for c in row.strip("|").split("|"))))
    assert cells["t_norm_mm"] == "1.0" and cells["num_samples"] == "2"  # registry digits; counts as integers


def test_make_table_lists_dense_and_face_size(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({
        "experiment": "e", "seed": 1, "geodesic_deg": 3.0, "dense_mean_mm": 2.5, "dense_median_mm": 2.0,
        "face_size_mm2": 1234.5, "count_dense": 4, "num_samples": 4}))
    runs = table.collect(tmp_path)
    for key in ("dense_mean_mm", "dense_median_mm", "face_size_mm2", "num_samples"):
        assert key in runs.columns, key
    assert "nme2d" not in runs.columns  # a metric no run reports is no column
    assert isinstance(runs, pd.DataFrame) and len(runs) == 1
