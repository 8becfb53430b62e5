"""`make bench-gpu`: training img/s per model on a CUDA GPU (fp32 and the trainer=gpu mixed precision,
interleaved, medians) and the largest batch that fits in 80 GB, from the peak memory of two batch sizes
(memory is affine in the batch). Exits with a message (status 0) where no GPU is at hand.

    python benchmarks/bench_gpu.py [--models opnet,trg] [--batch 256] [--steps 20] [--json gpu.json]

docs/reproducing.md turns the img/s into each paper run's expected wall time: samples / (img/s).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

BUDGET_GB = 80.0


def peak_gb(model: str, batch: int) -> float:
    import bench_train
    b, cfg = bench_train.fixed_batch(model, batch)
    b = {k: v.cuda() if torch.is_tensor(v) else v for k, v in b.items()}
    m, opt, _ = bench_train.build_variant(cfg, "bf16_cl", None, "cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    bench_train.one_step(m, opt, True, b, "cuda")
    bench_train.one_step(m, opt, True, b, "cuda")
    del m, opt, b
    return torch.cuda.max_memory_allocated() / 2**30


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="opnet,trg")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing measured. "
              "Run it on a GPU machine after `make setup TORCH=...` with a CUDA build (README.md).")
        return None
    import bench_train
    out = {"machine": bench_train.machine() | {"gpu": torch.cuda.get_device_name(0),
                                               "bf16": torch.cuda.is_bf16_supported()}, "models": {}}
    for m in args.models.split(","):
        step = bench_train.bench_model(m, ["fp32", "bf16_cl"], args.batch, args.steps, 3, "cuda")
        small, large = max(args.batch // 4, 1), args.batch
        g1, g2 = peak_gb(m, small), peak_gb(m, large)
        per_sample = (g2 - g1) / (large - small)
        max_batch = int((BUDGET_GB - (g1 - per_sample * small)) / per_sample) if per_sample > 0 else None
        out["models"][m] = {"batch": args.batch, "img_per_s": {v: r["img_per_s"] for v, r in step["variants"].items()},
                            "peak_gb": {small: g1, large: g2}, f"max_batch_{int(BUDGET_GB)}gb": max_batch}
    print(json.dumps(out, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
