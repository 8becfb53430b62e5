"""Paper-table grids (hpe_bench.grid): jobs per row x seed x protocol, dry run, re-entrant, failures isolated."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpe_bench import grid
from hpe_bench.table import collect

OWN = {"trg": "arkitface", "trg_arkit": "arkitface"}


def fake_plan(tmp_path, **kw):
    return grid.plan("trg", "table5", [1, 2], tmp_path, ["trainer=gpu"],
                     protocol_of_preset=lambda preset, ov: OWN[preset], **kw)


def test_jobs_cover_rows_seeds_and_protocols(tmp_path):
    jobs = grid.plan("trg", "table1", [1, 2], tmp_path, [], protocol_of_preset=lambda p, ov: "arkitface")
    assert len(jobs) == 7 * 2 * 2  # 7 runnable rows x 2 seeds x (train on ARKitFace + test on BIWI)
    test = next(j for j in jobs if j.parent is not None)
    assert test.protocol == "biwi_6dof" and test.out_dir == test.parent.out_dir / "test_biwi_6dof"
    argv = test.argv()
    assert "data=biwi_6dof" in argv and "train=false" in argv
    assert f"ckpt_path={test.parent.out_dir / 'checkpoints' / 'last.ckpt'}" in argv
    (test.parent.out_dir / "checkpoints").mkdir(parents=True)
    (test.parent.out_dir / "checkpoints" / "swa.ckpt").touch()  # the SWA weights win where the recipe saved them
    assert f"ckpt_path={test.parent.out_dir / 'checkpoints' / 'swa.ckpt'}" in test.argv()
    mini = grid.plan("trg", "table1", [1], tmp_path, [], {"arkitface": "synthetic", "biwi_6dof": "synthetic"},
                     only=["trg"], protocol_of_preset=lambda p, ov: "synthetic")
    assert [(j.preset, j.protocol) for j in mini] == [("trg", "synthetic")]  # one run covers both columns


def test_rerun_skips_done_and_retries_failed(tmp_path):
    calls = []

    def runner(job):  # writes the run's metrics.json like a real job; trg_arkit seed 2 crashes the first time
        calls.append((job.preset, job.seed, job.protocol))
        if (job.preset, job.seed) == ("trg_arkit", 2) and len(calls) < 20:
            return 1
        job.out_dir.mkdir(parents=True, exist_ok=True)
        (job.out_dir / "metrics.json").write_text(json.dumps({"experiment": job.preset, "seed": job.seed}))
        return 0

    jobs = grid.run(fake_plan(tmp_path), runner, echo=lambda s: None)
    assert grid.summary(jobs) == {"done": 3, "failed": 1}  # the failure did not stop the jobs after it
    assert calls[-1] == ("trg", 2, "arkitface")
    calls.clear()
    dry = grid.run(fake_plan(tmp_path), runner, dry_run=True, echo=lambda s: None)
    assert calls == [] and grid.summary(dry) == {"done": 3, "todo": 1}
    calls.extend([None] * 30)  # from now on the job succeeds
    jobs = grid.run(fake_plan(tmp_path), runner, echo=lambda s: None)
    assert calls[30:] == [("trg_arkit", 2, "arkitface")] and grid.summary(jobs) == {"done": 4}


def test_tests_of_a_failed_training_run_are_skipped(tmp_path):
    jobs = grid.plan("trg", "table1", [1], tmp_path, [], only=["trg"], protocol_of_preset=lambda p, ov: "arkitface")
    jobs = grid.run(jobs, lambda job: 1, echo=lambda s: None)
    assert [j.state for j in jobs] == ["failed", "blocked"]


def test_cli_dry_run_lists_jobs_and_bad_table_is_named(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpe_bench.grid", "opnet", "table3", "--seeds", "1,2",
                          "--root", str(tmp_path), "--dry-run", "trainer.max_steps=5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("would run") == 3 * 2 and "experiment=opnet_blfs seed=2" in out.stdout
    assert "trainer.max_steps=5" in out.stdout and not any(tmp_path.iterdir())
    bad = subprocess.run([sys.executable, "-m", "hpe_bench.grid", "opnet", "table7", "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "table7" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_table(tmp_path):
    """The real entry point: one tiny OpNet BL run on the synthetic set, then the paper table reads it."""
    cmd = [sys.executable, "-m", "hpe_bench.grid", "opnet", "table2", "--only", "opnet", "--seeds", "1",
           "--root", str(tmp_path), "--protocol", "aflw2000=synthetic", "debug=default", "data=synthetic",
           "logger=none", "callbacks=none"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / "opnet" / "seed1" / "metrics.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "1 done" in again.stdout and "running" not in again.stdout
    runs = collect(tmp_path)
    assert list(runs["experiment"]) == ["opnet"] and list(runs["protocol"]) == ["synthetic"]


def test_slurm_plan_checks_everything_before_submitting(tmp_path, monkeypatch):
    """--launcher slurm: one job per row x seed testing itself on every protocol of the table; before anything is
    queued, every missing dataset root (with its variable) and missing pretrained weights are named at once."""
    for var in ("HPE_ARKITFACE_ROOT", "HPE_300WLP_ROOT", "HPE_BIWI_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("hpe_bench.models.backbones.pretrained_cached", lambda name: False)
    jobs = grid.plan("trg", "table1", [1, 2], tmp_path, ["debug=default"], only=["trg", "trg_grid_sampled"], test_on=True)
    assert [(j.preset, j.seed, j.test_on) for j in jobs] == [
        (p, s, ("arkitface", "biwi_6dof")) for p in ("trg_grid_sampled", "trg") for s in (1, 2)]
    assert "test_on=[arkitface,biwi_6dof]" in jobs[0].argv()
    problems = grid.check(jobs)
    text = "\n".join(problems)
    for var in ("HPE_ARKITFACE_ROOT", "HPE_300WLP_ROOT", "HPE_BIWI_ROOT"):
        assert var in text, text
    assert "model.net.pretrained=false" in text and "[trg_grid_sampled, trg]" in text, text
    assert len(problems) == len(set(problems))

    cmds = grid.multirun_commands(jobs, tmp_path, ["debug=default", "hydra.launcher.partition=cpu"])
    assert len(cmds) == 1  # a fresh table: one multirun, one job array
    assert {"experiment=trg_grid_sampled,trg", "seed=1,2", "test_on=[arkitface,biwi_6dof]", f"hydra.sweep.dir={tmp_path}",
            "hydra.sweep.subdir=${hydra.runtime.choices.experiment}/seed${seed}", "hydra/launcher=slurm",
            "hydra.launcher.partition=cpu"} <= set(cmds[0])
    for protocol in ("arkitface", "biwi_6dof"):  # trg_grid_sampled seed 1 finished: left out
        (jobs[0].out_dir / "metrics").mkdir(parents=True, exist_ok=True)
        (jobs[0].out_dir / "metrics" / f"{protocol}.json").write_text("{}")
    cmds = grid.multirun_commands(jobs, tmp_path, [])
    assert [[a for a in c if a.startswith(("experiment=", "seed="))] for c in cmds] == [
        ["experiment=trg_grid_sampled", "seed=2"], ["experiment=trg", "seed=1,2"]]
    prepare = [[a for a in c[3:]] for c in grid.prepare_commands(jobs)]  # after check: each row's data option known
    assert prepare == [["experiment=trg_grid_sampled", "debug=default"],  # both rows train on mix_trg: once
                       ["--splits", "test", "debug=default", "data=arkitface"],
                       ["--splits", "test", "debug=default", "data=biwi_6dof"]]
