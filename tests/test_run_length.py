"""A preset states its run length once, in its paper's unit (issue 9 item 5): samples (``model.total_samples``,
OpNet) or epochs (``trainer.max_epochs``, TRG); steps, LR milestones and the SWA start follow for any global
batch. Checked in 2-process CPU DDP runs (gloo), where a step hand-computed for one device would double the run.
"""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from hpe_bench.schedules import max_steps_for_samples

ROOT = Path(__file__).resolve().parents[1]
# 2 CPU processes, 4 samples each: 8 samples per optimizer step; 24 synthetic training images (12 per process)
DDP = ["debug=default", "trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=false",
       "trainer.max_steps=-1", "data.batch_size=4", "data.train.num_samples=24", "data.val.num_samples=4",
       "test=false", "logger=csv", "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
       "+callbacks.lr_monitor.logging_interval=step"]


def _trainer(batch: int, world: int, accumulate: int = 1, max_steps: int = -1):
    loop = SimpleNamespace(max_steps=max_steps)
    return SimpleNamespace(datamodule=SimpleNamespace(batch_size=batch), world_size=world,
                           accumulate_grad_batches=accumulate, max_steps=max_steps,
                           fit_loop=SimpleNamespace(epoch_loop=loop))


@pytest.mark.parametrize("batch,world,accumulate,steps", [(64, 1, 1, 234_375), (64, 2, 1, 117_188),
                                                          (32, 2, 2, 117_188), (256, 8, 1, 7_325)])
def test_samples_become_steps_of_the_global_batch(batch, world, accumulate, steps):
    # OpNet's N = 15 M samples: 15e6 / 64 = 234,375 steps on one device; ceil(15e6 / 128) = 117,188 on two
    trainer = _trainer(batch, world, accumulate)
    assert max_steps_for_samples(trainer, 15_000_000) == steps
    assert trainer.fit_loop.epoch_loop.max_steps == steps


def test_an_explicit_shorter_max_steps_wins():
    trainer = _trainer(64, 2, max_steps=2)  # debug=default
    assert max_steps_for_samples(trainer, 15_000_000) == 2 and trainer.fit_loop.epoch_loop.max_steps == 2
    with pytest.raises(ValueError, match="total_samples"):
        max_steps_for_samples(_trainer(64, 1), 0)


def _ddp_run(tmp_path: Path, *overrides: str) -> tuple[dict, pd.DataFrame]:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "hpe_bench", *DDP, *overrides, f"paths.output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = (tmp_path / "out" / "runs" / "default").iterdir()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    log = pd.read_csv(run / "csv" / "metrics.csv")
    lr_col = next(c for c in log.columns if c.startswith("lr-"))
    lrs = log.dropna(subset=[lr_col]).drop_duplicates("step").set_index("step")[lr_col]
    return ckpt, lrs


@pytest.mark.slow
def test_samples_preset_under_ddp(tmp_path):
    """48 samples / (2 processes x 4) = 6 steps; OpNet's lr / 10 from N/2 = 24 samples (the lr of step k is the
    factor after (k + 1) x 8 samples: k >= 2); SWA from 2N/3 = 32 samples, i.e. the weights after steps 4, 5, 6."""
    ckpt, lrs = _ddp_run(tmp_path, "model=opnet", "model.total_samples=48")
    assert ckpt["global_step"] == 6
    assert list(lrs.index) == [0, 1, 2, 3, 4, 5]
    assert lrs.tolist() == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-4])
    swa = next(v for k, v in ckpt["callbacks"].items() if "SampleSWA" in k)
    assert int(swa["averaged"]["n_averaged"]) == 3


@pytest.mark.slow
def test_epochs_preset_under_ddp(tmp_path):
    """2 epochs of 24 images on 2 processes: 12 per process, 3 steps of 4 per epoch = 6 steps (one device would
    take 6 per epoch); sixdrepnet's lr x 0.5 after 1/3 and 2/3 of the steps: from steps 2 and 4."""
    ckpt, lrs = _ddp_run(tmp_path, "model=sixdrepnet", "model.net.backbone=resnet10t", "trainer.max_epochs=2")
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 2  # epochs completed when the final last.ckpt was written
    assert list(lrs.index) == [0, 1, 2, 3, 4, 5]
    assert lrs.tolist() == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5])
