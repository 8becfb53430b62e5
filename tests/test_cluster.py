"""Cluster runs (docs/cluster.md): the submitit launchers compose with nodes/GPUs from the trainer, a requeued
SLURM job resumes from last.ckpt under the same W&B id, and a multirun through the local submitit launcher."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

import hpe_bench  # noqa: F401  (resolvers)
from hpe_bench.cluster import WANDB_ID_FILE, fit_ckpt_path, keep_wandb_id

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_with(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_takes_nodes_and_gpus_from_the_trainer():
    cfg = compose_with("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp",
                       "trainer.num_nodes=2", "trainer.devices=4")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["nodes"] == 2 and launcher["gpus_per_node"] == 4 and launcher["tasks_per_node"] == 4
    assert launcher["partition"] == "gpu" and launcher["max_num_timeout"] > 0
    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"


@pytest.mark.parametrize("overrides, gpus, tasks", [
    (["debug=default"], 0, 1),                          # a CPU partition: no gres request at all
    (["trainer=cpu"], 0, 1),
    (["trainer=ddp", "debug=default"], 0, 2),            # DDP over 2 CPU processes: 2 tasks, no GPU
    (["trainer=gpu"], 1, 1),
    (["trainer=ddp", "trainer.devices=4"], 4, 4),
])
def test_slurm_launcher_asks_for_gpus_only_when_the_trainer_uses_them(overrides, gpus, tasks):
    cfg = compose_with("hydra/launcher=slurm", *overrides)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"]) == (gpus, tasks)


def test_loader_workers_follow_the_slurm_cpus_per_task(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert compose_with("data=synthetic").data.num_workers == 2  # outside SLURM: the option's own number
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert compose_with("data=synthetic").data.num_workers == 7  # hydra.launcher.cpus_per_task=8: 7 workers + the trainer
    assert compose_with("experiment=trg").data.num_workers == 7
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert compose_with("data=synthetic").data.num_workers == 0
    assert compose_with("data=synthetic", "data.num_workers=3").data.num_workers == 3  # the command line wins
    assert compose_with("data=synthetic", "debug=default").data.num_workers == 0


def test_local_launcher_composes():
    cfg = compose_with("hydra/launcher=local")
    assert get_class(cfg.hydra.launcher._target_).__name__ == "LocalLauncher"


def test_requeued_job_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"ckpt_path": None})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert fit_ckpt_path(cfg, tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert fit_ckpt_path(cfg, tmp_path) is None  # requeued before its first checkpoint: starts over
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert fit_ckpt_path(cfg, tmp_path) == "last"
    assert fit_ckpt_path(OmegaConf.create({"ckpt_path": "other.ckpt"}), tmp_path) == "other.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert fit_ckpt_path(cfg, tmp_path) is None


def test_wandb_id_is_kept_in_the_run_dir(tmp_path, monkeypatch):
    for key in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    root = OmegaConf.create({"experiment_name": "x", "logger": {
        "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "name": "${experiment_name}"},
        "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "."}}})
    first = keep_wandb_id(root.logger, tmp_path).wandb.id
    stored = json.loads((tmp_path / WANDB_ID_FILE).read_text())["id"]
    again = OmegaConf.create({"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger"}})
    assert first == stored == keep_wandb_id(again, tmp_path).wandb.id  # the requeued job: same id
    assert root.logger.wandb.resume == "allow" and root.logger.wandb.name == "x"  # interpolations still resolve
    assert "id" not in root.logger.csv


@pytest.mark.slow
def test_multirun_through_the_local_submitit_launcher(tmp_path):
    """Two jobs as submitit subprocesses (the code path of hydra/launcher=slurm), each a complete run."""
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "hpe_bench", "-m", "hydra/launcher=local", "debug=default",
           "model.net.backbone=resnet10t", "logger=none", "trainer.max_steps=1", "data.test.num_samples=5",
           f"paths.output_dir={tmp_path / 'out'}", "seed=1,2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = sorted((tmp_path / "out" / "multirun").rglob("metrics.json"))
    assert len(metrics) == 2
    records = [json.loads(p.read_text()) for p in metrics]
    assert sorted(r["seed"] for r in records) == [1, 2] and all(r["num_samples"] == 5 for r in records)
    assert list((tmp_path / "out" / "multirun").rglob(".submitit"))  # ran through submitit
