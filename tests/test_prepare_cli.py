"""``python -m hpe_bench.prepare``: composes a data config, prepares every split, reports, fails clearly."""
import shutil
from pathlib import Path

import pytest
from test_prepared import write_fake

import hpe_bench.prepare as prep

CONF = Path(__file__).resolve().parents[1] / "conf"

FAKE_YAML = """\
_target_: hpe_bench.data.datamodule.HeadPoseDataModule
name: fake
euler_rule: opnet
root: ${oc.env:HPE_FAKE_ROOT_FOR_TESTS,null}
batch_size: 4
num_workers: 0
test:
  _target_: hpe_bench.data.prepared.PreparedDataset
  source:
    _target_: test_prepared.FakeSource
    _partial_: true
    root: ${data.root}
    split: test
  cache_dir: ${paths.cache_dir}
  working_size: 64
"""

MIX_YAML = """\
_target_: hpe_bench.data.datamodule.HeadPoseDataModule
name: fake_mix
euler_rule: opnet
root: null
train:
  _target_: hpe_bench.data.mixture.MixtureDataset
  length: 100
  probabilities: {one: 0.7, two: 0.3}
  datasets:
    one:
      _target_: hpe_bench.data.prepared.PreparedDataset
      source: {_target_: test_prepared.FakeSource, _partial_: true, root: "${oc.env:FAKE_ONE}", split: train}
      cache_dir: ${paths.cache_dir}
      working_size: 64
      on_error: skip
    two:
      _target_: hpe_bench.data.prepared.PreparedDataset
      source: {_target_: test_prepared.FakeSource, _partial_: true, root: "${oc.env:FAKE_TWO}", split: train}
      cache_dir: ${paths.cache_dir}
      working_size: 64
      on_error: skip
"""


@pytest.fixture
def conf(tmp_path, monkeypatch):
    """A copy of conf/ with two extra data options, used by the CLI instead of the real conf/."""
    dst = tmp_path / "conf"
    shutil.copytree(CONF, dst)
    (dst / "data" / "fake.yaml").write_text(FAKE_YAML)
    (dst / "data" / "fake_mix.yaml").write_text(MIX_YAML)
    monkeypatch.setattr(prep, "CONF_DIR", str(dst))
    return dst


def test_prepares_every_split_and_reports(conf, tmp_path, capsys):
    root = write_fake(tmp_path / "raw", n=6)
    args = ["data=fake", f"root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    assert prep.main(args) == 0
    out = capsys.readouterr().out
    path = Path(out.split("-> ")[1].strip())
    assert out.startswith("data.test: 6 records") and path.is_file() and path.is_relative_to(tmp_path / "cache")
    shutil.rmtree(root)  # the cache is found again without the raw files
    assert prep.main(args) == 0 and capsys.readouterr().out.startswith("data.test: 6 records")


def test_missing_or_unset_root_is_an_error_naming_the_path(conf, tmp_path, capsys):
    assert prep.main(["data=fake", f"root={tmp_path / 'nowhere'}", f"paths.cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "expected layout" in err and "labels.npz" in err
    assert prep.main(["data=fake", f"paths.cache_dir={tmp_path}"]) == 2
    assert "no dataset root given" in capsys.readouterr().err


def test_bad_record_fails_evaluation_splits_and_is_skipped_when_asked(conf, tmp_path, capsys):
    root = write_fake(tmp_path / "raw", n=5)
    (root / "img_002.png").write_bytes(b"broken")
    base = ["data=fake", f"root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    assert prep.main(base) == 3
    assert "img_002.png" in capsys.readouterr().err
    assert prep.main(base + ["++data.test.on_error=skip"]) == 0
    assert "data.test: 4 records, 1 skipped of 5" in capsys.readouterr().out


def test_mixture_members_are_prepared(conf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_ONE", str(write_fake(tmp_path / "one", n=3)))
    monkeypatch.setenv("FAKE_TWO", str(write_fake(tmp_path / "two", n=4, seed=1)))
    assert prep.main(["data=fake_mix", f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" ->")[0] for ln in lines] == ["data.train.one: 3 records", "data.train.two: 4 records"]


def test_aflw2000_nan_angle_and_corrupt_mat_through_prepare(conf, tmp_path, capsys, shared_assets):
    """The real data=aflw2000 config: on_error=raise (its default) exits 3 naming the first bad file; skip
    prepares the good records and counts the NaN-angle and corrupt-.mat records as skipped."""
    from test_data_aflw2000 import bad_angle_root

    root = bad_angle_root(tmp_path / "AFLW2000", shared_assets)
    base = ["data=aflw2000", f"root={root}", f"paths.cache_dir={tmp_path / 'cache'}",
            "++data.test.working_size=32"]
    assert prep.main(base) == 3
    err = capsys.readouterr().err
    assert "image00008.mat" in err and "Pose_Para" in err and "Traceback" not in err
    assert prep.main(base + ["++data.test.on_error=skip"]) == 0
    assert capsys.readouterr().out.startswith("data.test: 2 records, 2 skipped of 4 -> ")
