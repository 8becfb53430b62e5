"""`make table`: runs grouped over seeds."""
import json

import pytest

from hpe_bench.table import collect, main, summarise


def fake_run(root, name, seed, geo, overrides=()):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in (*overrides, f"seed={seed}")))
    (d / "metrics.json").write_text(json.dumps({
        "experiment": "exp", "model": "m", "data": "d", "loss": "l", "euler_convention": "trg", "seed": seed,
        "geodesic_deg": geo, "mae_r_deg": geo / 2, "num_samples": 10, "mean_pose": {"geodesic_deg": 60.0}}))


def test_seeds_average_and_configs_stay_apart(tmp_path, capsys):
    fake_run(tmp_path, "a", 1, 10.0, ["model.crop.size=96"])
    fake_run(tmp_path, "b", 2, 14.0, ["model.crop.size=96"])
    fake_run(tmp_path, "c", 1, 30.0, ["model.crop.size=64"])
    table = summarise(collect(tmp_path))
    assert len(table) == 2
    row = table[table["overrides"] == "model.crop.size=96"].iloc[0]
    assert row["geodesic_deg"] == pytest.approx(12.0) and row["seeds"] == 2
    assert row["geodesic_deg_std"] == pytest.approx(2 ** 0.5 * 2)  # sample std of (10, 14)
    main([str(tmp_path), "--out", str(tmp_path / "t.md")])
    assert "model.crop.size=64" in (tmp_path / "t.md").read_text()


def test_corrupt_metrics_file_is_named(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{half")
    with pytest.raises(ValueError, match="metrics.json"):
        collect(tmp_path)
