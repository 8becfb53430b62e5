"""Atomic writes and output-directory checks of hpe_bench.outputs."""
import json

import pandas as pd
import pytest
import torch

from hpe_bench.outputs import OutputError, atomic_path, check_writable, prediction_columns, write_json, write_parquet


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_nan_becomes_null_and_tensors_numbers(tmp_path):
    write_json(tmp_path / "m.json", {"x": float("nan"), "t": torch.tensor(2.5), "n": torch.tensor(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "t": 2.5, "n": 3}


def test_parquet_roundtrip(tmp_path):
    df = pd.DataFrame({"sample_id": ["a", "b"], "v": [1.0, float("nan")]})
    write_parquet(tmp_path / "p.parquet", df)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), df)


def test_unwritable_directory_names_path_and_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError) as err:
        check_writable(blocker / "sub", key="hydra.run.dir")
    assert str(blocker) in str(err.value) and "hydra.run.dir" in str(err.value)


def test_prediction_columns_nan_where_label_absent():
    B = 2
    batch = {"sample_id": ["a", "b"], "dataset": ["d", "d"], "R": torch.eye(3).expand(B, 3, 3),
             "has_R": torch.tensor([True, False]), "t": torch.ones(B, 3), "has_t": torch.tensor([False, True])}
    cols = prediction_columns({"R": torch.eye(3).expand(B, 3, 3)}, batch, {})
    assert cols["gt_R_00"][0] == 1.0 and cols["gt_R_00"][1] != cols["gt_R_00"][1]  # NaN
    assert cols["gt_t_x"][0] != cols["gt_t_x"][0] and cols["gt_t_x"][1] == 1.0
    assert all(v != v for v in cols["pred_t_z"])  # model predicted no translation
