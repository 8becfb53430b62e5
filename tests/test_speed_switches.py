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


def test_fp32_strided_depthwise_swaps_exactly_those_convolutions():
    """OpNet's MobileNet: its four stride-2 depthwise 3x3 convolutions (32->64 px ... 512 channels) become
    Float32Conv2d; every other layer, every parameter name and value stays; float32 outputs are unchanged."""
    from hpe_bench.models.mixed_precision import Float32Conv2d
    from hpe_bench.models.opnet import OpNet

    torch.manual_seed(0)
    plain = OpNet(backbone="mobilenetv1").eval()
    fast = OpNet(backbone="mobilenetv1").eval()
    fast.load_state_dict(plain.state_dict())
    module = HeadPoseModule(net=fast, crop=CropInput(size=64, grayscale=True), fp32_strided_depthwise=True)
    swapped = [m for m in module.net.modules() if isinstance(m, Float32Conv2d)]
    # independent count from the layer list: depthwise (groups == channels) with stride 2
    expected = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.stride == (2, 2)]
    assert len(swapped) == len(expected) == 4
    assert [m.in_channels for m in swapped] == [m.in_channels for m in expected]
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for key, value in plain({"image": x}).items():
            if torch.is_tensor(value) and value.is_floating_point():
                torch.testing.assert_close(fast({"image": x})[key], value, atol=1e-6, rtol=1e-6, msg=key)


def test_float32_conv_under_autocast_computes_in_float32():
    """Under bf16 autocast a Float32Conv2d equals the float32 convolution of its (bf16) input, rounded once to
    bfloat16; the plain bf16 convolution (weights rounded too) is further from it."""
    from hpe_bench.models.mixed_precision import float32_strided_depthwise

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
    conv.weight.data.normal_(0, 0.3)
    plain = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
    plain.load_state_dict(conv.state_dict())
    assert float32_strided_depthwise(torch.nn.Sequential(conv)) == 1
    x = torch.randn(2, 16, 17, 17).bfloat16()
    reference = torch.nn.functional.conv2d(x.float(), conv.weight, stride=2, padding=1, groups=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_bf16 = conv(x), plain(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 16, 9, 9)
    torch.testing.assert_close(y, reference.bfloat16(), atol=0, rtol=0.008)  # one bf16 rounding
    assert (y.float() - reference).abs().mean() < (y_bf16.float() - reference).abs().mean()
