"""Speed switches of HeadPoseModule (docs/performance.md): bf16 autocast reaches only the net (losses, metrics
and label geometry stay full precision), channels_last and torch.compile leave the weights' names and values
alone. No timing here: measured speed-ups come from benchmarks/bench_train.py."""
import torch

from hpe_bench.lit_module import HeadPoseModule
from hpe_bench.losses.direct_regression import DirectRegressionLoss
from hpe_bench.models import create_model
from hpe_bench.models.crop import CropInput
from tests.test_baseline import toy_batch


def _module(**kwargs):
    torch.manual_seed(0)
    net = create_model("direct_regression", backbone="resnet10t")
    return HeadPoseModule(net=net, crop=CropInput(size=32), loss=DirectRegressionLoss(), **kwargs)


def test_bf16_autocast_reaches_only_the_net():
    module = _module().train()
    batch = toy_batch(B=2, size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = module.crop(batch)  # what the net sees is made outside autocast (training_step does so)
        pred = module(batch)
        loss = module.training_step(batch, 0)
    assert pred["R"].dtype == torch.float32 and pred["t"].dtype == torch.float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # rotations leave the net orthonormal to float32 precision although the net ran in bfloat16
    eye = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(pred["R"].transpose(1, 2) @ pred["R"], eye, atol=1e-4)
    assert inputs["image"].dtype == torch.float32


def test_bf16_first_loss_close_to_float32():
    """Same weights, same batch: the bf16 loss is the float32 loss to bf16 precision (3 significant digits)."""
    module = _module().eval()  # no dropout: both losses see the same function
    batch = toy_batch(B=2, size=64)
    with torch.no_grad():
        full = module.loss_fn(module(batch), batch, module.crop(batch))["loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = module.loss_fn(module(batch), batch, module.crop(batch))["loss"]
    assert abs(float(half) - float(full)) <= 0.02 * abs(float(full)) + 1e-3


def test_channels_last_and_compile_keep_the_weights():
    plain, fast = _module(), _module(channels_last=True, compile=True)
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    fast.setup("fit")  # compiles in place (lazily: nothing is compiled before the first call)
    assert list(fast.state_dict()) == list(plain.state_dict())  # checkpoints and export unchanged
    for (k, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), k
    batch = toy_batch(B=2, size=64)
    plain.eval()
    cl = _module(channels_last=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(cl(batch)["R"], plain(batch)["R"], atol=1e-5, rtol=1e-4)
