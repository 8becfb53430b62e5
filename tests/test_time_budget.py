"""The demo's time budget (callbacks.TimeBudget): the run length fitted to a measured step time, the LR schedule
rebuilt for it (HeadPoseModule.replan_schedule). A fake clock makes every number hand-derivable."""
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import hpe_bench.callbacks as C
from hpe_bench.callbacks import TimeBudget
from hpe_bench.lit_module import HeadPoseModule


class FakeTrainer(SimpleNamespace):
    @property
    def max_steps(self):
        return self.fit_loop.epoch_loop.max_steps


def _trainer(max_steps=3000, batches=125, every=3):
    return FakeTrainer(global_step=0, num_training_batches=batches, check_val_every_n_epoch=every,
                       sanity_checking=False, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=max_steps)))


@pytest.fixture
def clock(monkeypatch):
    state = SimpleNamespace(t=100.0, age0=20.0)  # the process started 20 s before the fake monotonic 100
    monkeypatch.setattr(C.time, "monotonic", lambda: state.t)
    monkeypatch.setattr(C, "process_age", lambda: state.age0 + state.t - 100.0)
    return state


def _steps(cb, trainer, module, clock, n, seconds_per_step):
    for _ in range(n):
        clock.t += seconds_per_step
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, None, 0)


def test_plan_fits_the_measured_step_time(clock):
    calls = []
    module = SimpleNamespace(replan_schedule=calls.append)
    trainer = _trainer()
    cb = TimeBudget(seconds=300, reserve_seconds=30, warmup_steps=10, measure_steps=40)
    cb.on_fit_start(trainer, module)
    _steps(cb, trainer, module, clock, 10, 2.0)  # slow warm-up steps are not measured
    assert cb.plan is None
    _steps(cb, trainer, module, clock, 40, 0.5)
    # at step 50 the process is 20 + 10 * 2 + 40 * 0.5 = 60 s old: 300 - 30 - 60 = 210 s left, 0.5 s/step -> 420
    assert trainer.max_steps == 50 + 420 and calls == [470]
    assert cb.plan["seconds_per_step"] == pytest.approx(0.5) and cb.plan["planned_at_step"] == 50


def test_plan_never_exceeds_the_configured_length(clock):
    module = SimpleNamespace(replan_schedule=lambda n: None)
    trainer = _trainer(max_steps=200)
    cb = TimeBudget(seconds=10_000, warmup_steps=2, measure_steps=4)
    cb.on_fit_start(trainer, module)
    _steps(cb, trainer, module, clock, 6, 0.1)
    assert trainer.max_steps == 200 and cb.plan["configured_max_steps"] == 200


def test_validation_time_shortens_the_plan(clock):
    calls = []
    module = SimpleNamespace(replan_schedule=calls.append)
    trainer = _trainer(batches=10, every=1)  # a validation pass every 10 steps
    cb = TimeBudget(seconds=300, reserve_seconds=0, warmup_steps=0, measure_steps=10)
    cb.on_fit_start(trainer, module)
    _steps(cb, trainer, module, clock, 10, 1.0)  # 20 + 10 = 30 s old: 270 s left -> 10 + 270 = 280 steps
    assert trainer.max_steps == 280
    cb.on_validation_epoch_start(trainer, module)
    clock.t += 5.0  # each validation pass costs 5 s: every 10 steps take 10 + 5 s
    cb.on_validation_epoch_end(trainer, module)
    # 35 s old: 265 s left / (1 + 5 / 10) s per step = 176 more steps
    assert trainer.max_steps == 10 + 176 and calls == [280, 186]
    assert cb.plan["validation_seconds"] == pytest.approx(5.0)


def test_replan_schedule_continues_the_stretched_one_cycle():
    net = nn.Linear(2, 1)
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0, pct_start=0.2)
    module = HeadPoseModule(net=net, crop=nn.Identity(), scheduler=sched)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    first = module._build_scheduler(opt, 100)
    for _ in range(7):
        opt.step()
        first.step()
    config = SimpleNamespace(scheduler=first)
    module._trainer = SimpleNamespace(lr_scheduler_configs=[config])
    module.replan_schedule(40)
    # the LR torch's own OneCycleLR(total_steps=40) has after 7 steps, and it anneals to its end at step 40
    ref_opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=1.0, pct_start=0.2, total_steps=40)
    for _ in range(7):
        ref_opt.step()
        ref.step()
    assert config.scheduler.last_epoch == 7
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
    for _ in range(32):
        opt.step()
        config.scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / 25 / 1e4, rel=1e-6)  # max_lr / div / final_div


def test_a_check_that_keeps_the_plan_is_recorded(clock):
    module = SimpleNamespace(replan_schedule=lambda n: None)
    trainer = _trainer(max_steps=100, batches=10, every=1)
    cb = TimeBudget(seconds=10_000, reserve_seconds=0, warmup_steps=0, measure_steps=10)
    cb.on_fit_start(trainer, module)
    _steps(cb, trainer, module, clock, 10, 1.0)
    cb.on_validation_epoch_start(trainer, module)
    clock.t += 2.0
    cb.on_validation_epoch_end(trainer, module)
    # plenty of time: the plan (100 steps, decided at step 10) stays, the check and its measured times are kept
    assert trainer.max_steps == 100 and cb.plan["planned_at_step"] == 10
    assert cb.plan["last_check"]["validation_seconds"] == pytest.approx(2.0)
    assert cb.plan["last_check"]["seconds_per_step"] == pytest.approx(1.0)
