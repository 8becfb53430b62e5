"""What the machine computes fast: the precision policies behind ``trainer.precision`` resolvers.

``${hpe_bench.gpu_precision:}`` (conf/trainer/gpu.yaml) and ``${hpe_bench.fast_precision:<accelerator>}``
(conf/trainer/fast.yaml, the demo) are registered in ``hpe_bench/__init__.py`` and call these. On a CPU,
``trainer=fast`` resolves to ``MEASURE``, which the run replaces by the precision it measured fastest there
(``hpe_bench/precision.py``).
"""
from __future__ import annotations

# trainer.precision placeholder: "time the run's own training step in each candidate precision, keep the fastest"
# (hpe_bench/precision.py settle_precision, called by hpe_bench/run.py before the Trainer is built)
MEASURE = "measure"

# /proc/cpuinfo flags that decide which precisions a CPU computes natively (recorded with each measurement)
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_fp16",
                   "amx_int8", "amx_tile")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_identity() -> dict[str, str | list[str]]:
    """What a CPU measurement belongs to: ``model name``, ``cpu family``, ``model`` and ``stepping`` of
    ``/proc/cpuinfo`` (``platform.processor()`` elsewhere) and its ``PRECISION_FLAGS``. Virtual machines often
    report a short model name ("AMD EPYC"): family/model/stepping and the flags tell those apart."""
    import platform
    fields = {"model name": "model_name", "cpu family": "family", "model": "model", "stepping": "stepping"}
    ident: dict[str, str | list[str]] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                if key.strip() in fields:
                    ident[fields[key.strip()]] = value.strip()
    except OSError:
        pass
    ident.setdefault("model_name", platform.processor() or platform.machine() or "unknown")
    ident["flags"] = sorted(cpu_flags() & set(PRECISION_FLAGS))
    return ident


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
    (``gpu_precision``); on a CPU ``MEASURE``, the placeholder the run replaces by the precision its own
    training step ran fastest in (``hpe_bench.precision.settle_precision``). The CPU flags alone do not
    tell: with AMX bfloat16 runs ~2x float32, with AVX512-BF16 alone it was 1.5x on an AMD Zen 4 and 0.88x on an
    Intel Xeon for the same model (docs/performance.md). ``32-true`` on Apple's MPS.

    >>> fast_precision("cpu")
    'measure'
    """
    import torch
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return gpu_precision()
    if accelerator in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "32-true"
    return MEASURE


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
