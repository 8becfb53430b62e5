"""LR schedules counted in steps/samples, sample-counted SWA, inf-norm gradient clipping."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hpe_bench.lit_module import HeadPoseModule
from hpe_bench.schedules import global_batch_size, opnet_lr_factor, opnet_schedule, paper_step_schedule
from hpe_bench.swa import SampleSWA


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("samples,factor", [(0, 0.0), (25_000, 1 / 30), (375_000, 0.5), (750_000, 1.0),
                                            (7_499_999, 1.0), (7_500_000, 0.1), (15_000_000, 0.1)])
def test_opnet_lr_factor_at_known_sample_counts(samples, factor):
    # Paper: N = 15 M samples, warm-up over N/20 = 750 k, lr / 10 from N/2 = 7.5 M on.
    assert opnet_lr_factor(samples, 15_000_000) == pytest.approx(factor)


def test_opnet_schedule_counts_samples_not_steps():
    """The same N in samples gives the same lr at the same sample count for any global batch."""
    p = nn.Parameter(torch.zeros(1))
    for batch in (64, 128):
        opt = torch.optim.SGD([p], lr=1e-3)
        steps = 12_800 // batch
        lrs = _lrs(opnet_schedule(opt, total_steps=steps, samples_per_step=batch), opt, steps)
        # step k uses the factor after (k + 1) * batch samples; warm-up ends at 640 samples, decay at 6400
        for k, lr in enumerate(lrs):
            seen = (k + 1) * batch
            expected = 1e-4 if seen >= 6400 else 1e-3 * min(1.0, seen / 640)
            assert lr == pytest.approx(expected), (batch, k)
    opt = torch.optim.SGD([p], lr=1e-3)  # N = total_steps x batch = 1000 samples: warm-up over 50
    lrs = _lrs(opnet_schedule(opt, total_steps=100, samples_per_step=10), opt, 10)
    assert lrs[0] == pytest.approx(1e-3 * 10 / 50) and lrs[4] == pytest.approx(1e-3)


def test_paper_step_schedule_milestone():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    lrs = _lrs(paper_step_schedule(opt, total_steps=30), opt, 30)
    assert lrs[19] == 1.0 and lrs[20] == pytest.approx(0.1)


def test_global_batch_size_counts_processes_and_accumulation():
    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=16), world_size=4, accumulate_grad_batches=2)
    assert global_batch_size(trainer) == 128
    with pytest.raises(ValueError, match="data.batch_size"):
        global_batch_size(SimpleNamespace(datamodule=None, world_size=1, accumulate_grad_batches=1))


def test_swa_start_step_and_average_equals_mean_of_snapshots():
    swa = SampleSWA(start_fraction=2 / 3)
    assert swa.setup_schedule(total_steps=30, samples_per_step=8) == 20  # 2/3 of 240 samples = after step 20
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    snapshots = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(6, 3))  # moves the BN running statistics
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        swa.update(model)
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    swa.swap_in(target)
    for k in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        mean = torch.stack([s[k] for s in snapshots]).mean(0)
        torch.testing.assert_close(target.state_dict()[k], mean, msg=k)


def test_swa_callback_updates_once_per_step_from_start():
    swa = SampleSWA(start_fraction=0.5)
    swa.setup_schedule(total_steps=10, samples_per_step=4)  # start after step 5
    module = SimpleNamespace(net=nn.Linear(2, 1))
    for step in [3, 4, 5, 5, 6, 7]:  # 5 twice: accumulation micro-batches of one optimizer step
        swa.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, 0)
    assert int(swa.averaged.n_averaged) == 3


def test_inf_norm_gradient_clipping():
    net = nn.Linear(3, 2)
    module = HeadPoseModule(net=net, crop=nn.Identity(), grad_clip_max_norm=0.1, grad_clip_norm_type="inf")
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net.weight.grad = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.1, 0.0]])
    net.bias.grad = torch.tensor([0.3, 0.0])
    module.configure_gradient_clipping(opt)
    # inf-norm: every gradient scaled by 0.1 / max|g| = 0.1 / 2 (torch adds 1e-6 to the norm)
    torch.testing.assert_close(net.weight.grad, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.1, 0.0]]) * 0.05,
                               rtol=1e-5, atol=1e-8)
    assert net.weight.grad.abs().max() == pytest.approx(0.1, rel=1e-5)
    assert module.grad_clip_norm_type == math.inf
