"""What the machine computes fast: the precision policies behind ``trainer.precision`` resolvers.

``${hpe_bench.gpu_precision:}`` (conf/trainer/gpu.yaml) and ``${hpe_bench.fast_precision:<accelerator>}``
(conf/trainer/fast.yaml, the demo) are registered in ``hpe_bench/__init__.py`` and call these.
"""
from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 natively (AVX512-BF16 or AMX; Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
