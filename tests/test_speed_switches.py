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
    # outside CPU autocast it is nn.Conv2d: float32 inputs, and bfloat16 weights (bf16-true precision) too
    x32 = torch.randn(2, 16, 17, 17)
    assert torch.equal(conv(x32), plain(x32))
    conv16, plain16 = conv.to(torch.bfloat16), plain.to(torch.bfloat16)
    assert torch.equal(conv16(x), plain16(x)) and conv16(x).dtype == torch.bfloat16


MALLINFO_PROBE = r"""
import ctypes, ctypes.util, json, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
def mapped_after_malloc(size):
    before = libc.mallinfo2().hblks
    libc.malloc(size)
    return libc.mallinfo2().hblks - before
default = mapped_after_malloc(8 << 20)  # before any import that could have moved glibc's adaptive threshold
from hpe_bench.hardware import tune_malloc
ok = tune_malloc(mmap_threshold=32 << 20, top_pad=0)
tuned, above = mapped_after_malloc(8 << 20), mapped_after_malloc(40 << 20)
tune_malloc(top_pad=64 << 20)
arena = libc.mallinfo2().arena
libc.malloc(1 << 20)  # more than the heap top holds: the heap grows by the request + the pad
print(json.dumps({"default": default, "ok": ok, "tuned": tuned, "above_threshold": above,
                  "heap_growth_mb": (libc.mallinfo2().arena - arena) / 2**20}))
"""


def test_tune_malloc_serves_large_buffers_from_the_heap():
    """glibc maps an 8 MB allocation (its start-up mmap threshold is 128 KB); after tune_malloc with a 32 MB
    threshold the same request comes from the heap, and one above 32 MB is still mapped; a top pad makes the
    heap grow by the pad. Checked with glibc's own counters (mallinfo2), in a fresh process."""
    import ctypes
    import ctypes.util
    import json
    import subprocess
    import sys

    import pytest
    libc_name = ctypes.util.find_library("c")
    if not libc_name or not hasattr(ctypes.CDLL(libc_name), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    proc = subprocess.run([sys.executable, "-c", MALLINFO_PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout)
    growth = probe.pop("heap_growth_mb")
    assert probe == {"default": 1, "ok": True, "tuned": 0, "above_threshold": 1}
    assert 60 <= growth < 80  # ~ the 1 MB request + the 64 MB top pad (less what the top held), not 1 MB


def test_every_run_applies_the_configured_allocator(monkeypatch, tmp_path):
    """`python -m hpe_bench` tunes malloc with the config's `malloc` node first thing (before the data and the
    net allocate); `malloc=null` leaves glibc's defaults."""
    import pytest
    from omegaconf import OmegaConf

    import hpe_bench.run as run_module
    from tests.test_configs import compose_with

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # seeding comes right after the allocator; nothing later is needed here

    calls = []
    monkeypatch.setattr(run_module, "tune_malloc", lambda **kw: calls.append(kw) or True)
    monkeypatch.setattr(run_module, "output_dir", lambda: tmp_path)
    monkeypatch.setattr(run_module.L, "seed_everything", stop)
    cfg = compose_with()
    assert OmegaConf.to_container(cfg.malloc) == {"mmap_threshold": 32 << 20, "top_pad": 512 << 20}
    with pytest.raises(Stop):
        run_module.run(cfg)
    assert calls == [{"mmap_threshold": 32 << 20, "top_pad": 512 << 20}]
    cfg.malloc = None
    with pytest.raises(Stop):
        run_module.run(cfg)
    assert len(calls) == 1  # not called again
