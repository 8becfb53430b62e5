"""Results a group can read (issue 21, item 4): every atomically written file gets the umask's mode, as a plain
``open(path, "w")`` would, not mkstemp's 0600 - metrics/predictions/run_info/tables, HDF5 caches, predict outputs."""
import os
import stat
from contextlib import contextmanager

import pandas as pd
import pytest

from hpe_bench.data.h5cache import atomic_h5
from hpe_bench.filemode import current_umask, default_file_mode
from hpe_bench.outputs import atomic_path, write_json, write_parquet
from hpe_bench.predict import Staging


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it():
    with umask(0o027):
        assert current_umask() == 0o027 and default_file_mode() == 0o640
        assert current_umask() == 0o027


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_results_and_caches_take_the_umask_mode(tmp_path, mask, expected):
    with umask(mask):
        write_json(tmp_path / "metrics.json", {"a": 1})
        write_parquet(tmp_path / "predictions.parquet", pd.DataFrame({"x": [1.0]}))
        with atomic_path(tmp_path / "table.md") as tmp:
            tmp.write_text("| a |\n")
        with atomic_h5(tmp_path / "cache.h5", {"v": 1}) as f:
            f.create_dataset("x", data=[1, 2])
        stage = Staging()
        stage.path(tmp_path / "pred" / "out.csv").write_text("x\n")
        stage.commit()
        for name in ("metrics.json", "predictions.parquet", "table.md", "cache.h5", "pred/out.csv"):
            assert mode(tmp_path / name) == expected, name
        write_json(tmp_path / "metrics.json", {"a": 2})  # rewriting keeps it shareable
        assert mode(tmp_path / "metrics.json") == expected
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind
