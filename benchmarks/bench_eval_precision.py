"""What float32 evaluation costs and what bf16 evaluation would change (docs/performance.md).

For each model, the same weights and one fixed test batch: the module's prediction (``HeadPoseModule.forward``,
what validation and test run) in float32 (``model.eval_precision=32``, the default) and under bf16 autocast (what
evaluation did before, inside Lightning's ``bf16-mixed``), interleaved, medians; then how far the bf16 rotations
are from the float32 ones (geodesic, degrees).

    python benchmarks/bench_eval_precision.py                                   # opnet, trg, direct_regression
    python benchmarks/bench_eval_precision.py --models direct_regression \\
        --ckpt direct_regression=outputs/runs/demo/<time>/checkpoints/last.ckpt --overrides "experiment=demo"
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_train  # noqa: E402


def bench_model(model: str, batch_size: int, rounds: int, ckpt: str | None, overrides: tuple[str, ...]) -> dict:
    from hpe_bench import geometry as G
    from hpe_bench.outputs import scored_pose

    batch, cfg = bench_train.fixed_batch(model, batch_size, overrides=overrides)
    torch.manual_seed(0)
    module, _, _ = bench_train.build_variant(cfg, "fp32", None, "cpu")
    if ckpt:
        module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    module.eval()
    module.eval_full_precision = False  # autocast decided below, per variant

    def predict(bf16: bool) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            R = scored_pose(module(batch))[0]["R"]
        return time.perf_counter() - t0, R

    times = {"fp32": [], "bf16": []}
    for i in range(rounds + 1):
        for name in times:
            dt, R = predict(name == "bf16")
            if i:  # the first round warms up
                times[name].append(dt)
    R32, R16 = predict(False)[1], predict(True)[1]
    dev = torch.rad2deg(G.geodesic_angle(R16, R32))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": model, "batch": batch_size, "checkpoint": ckpt, "fp32_img_per_s": batch_size / med["fp32"],
            "bf16_img_per_s": batch_size / med["bf16"], "fp32_cost_vs_bf16": med["fp32"] / med["bf16"],
            "bf16_vs_fp32_rotation_deg_mean": float(dev.mean()), "bf16_vs_fp32_rotation_deg_max": float(dev.max())}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="opnet,trg,direct_regression")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ckpt", action="append", default=[], help="MODEL=checkpoint (trained weights)")
    p.add_argument("--overrides", default="", help="Hydra overrides for every model, space-separated")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpts = dict(c.split("=", 1) for c in args.ckpt)
    results = [bench_model(m, args.batch, args.rounds, ckpts.get(m), tuple(args.overrides.split()))
               for m in args.models.split(",")]
    info = {"machine": bench_train.machine(), "results": results}
    print(json.dumps(info, indent=1))
    print(f"{'model':<20}{'fp32 img/s':>12}{'bf16 img/s':>12}{'fp32/bf16 time':>16}{'rot. change mean/max deg':>28}")
    for r in results:
        print(f"{r['model']:<20}{r['fp32_img_per_s']:>12.1f}{r['bf16_img_per_s']:>12.1f}{r['fp32_cost_vs_bf16']:>16.2f}"
              f"{r['bf16_vs_fp32_rotation_deg_mean']:>16.3f} / {r['bf16_vs_fp32_rotation_deg_max']:.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(info, indent=1))
    return results


if __name__ == "__main__":
    main()
