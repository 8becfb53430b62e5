"""What the machine computes fast: the precision policies behind ``trainer.precision`` resolvers.

``${hpe_bench.gpu_precision:}`` (conf/trainer/gpu.yaml) and ``${hpe_bench.fast_precision:<accelerator>}``
(conf/trainer/fast.yaml, the demo) are registered in ``hpe_bench/__init__.py`` and call these.
"""
from __future__ import annotations


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 natively (AVX512-BF16 or AMX; Linux ``/proc/cpuinfo`` flags)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without them
    ONNX Runtime's uint8 x int8 kernels can saturate 16-bit intermediates, which 7-bit weights
    (``reduce_range``) avoid; ``deploy.quantize`` picks that from here (as Hugging Face Optimum's AVX2/AVX512
    vs AVX512-VNNI quantisation presets do)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def gpu_precision() -> str:
    """``bf16-mixed`` where the GPU has bfloat16 (Ampere and newer: no loss scaling needed), else ``16-mixed``."""
    import torch
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"


def fast_precision(accelerator: str = "auto") -> str:
    """The fastest precision that trains as well as float32 here: mixed precision on a GPU
    (``gpu_precision``), ``bf16-mixed`` on a CPU with native bfloat16, else ``32-true`` (emulated bfloat16 on
    a CPU without it is several times slower than float32; docs/performance.md).

    >>> fast_precision("cpu") in ("bf16-mixed", "32-true")
    True
    """
    import torch
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return gpu_precision()
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


# glibc mallopt parameters (malloc.h)
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3


def tune_malloc(mmap_threshold: int | None = None, top_pad: int | None = None) -> bool:
    """Set glibc's allocator parameters for this process (``mallopt``; what ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TOP_PAD_`` do at start-up). Returns False where the C library has no ``mallopt`` (macOS, musl):
    nothing changes there.

    Why: a training step allocates and frees the same large activation buffers every step. With glibc's defaults
    many are served by fresh ``mmap`` pages (and the heap top is trimmed back to the system), which the kernel
    zero-fills on first touch at every step; a fixed 32 MB mmap threshold and a heap top pad keep them in the
    heap for reuse. OpNet's float32 step ran 1.3-1.4x faster, its bf16 step 1.1-1.2x, TRG's 1.05x
    (docs/performance.md). PyTorch's CPU tuning guide suggests jemalloc/tcmalloc through ``LD_PRELOAD`` for the
    same reason; this needs no extra library and no launcher. Written here because no Python package exposes
    ``mallopt``.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = True
    for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TOP_PAD, top_pad)):
        if value is not None:
            ok = bool(mallopt(param, int(value))) and ok
    return ok
