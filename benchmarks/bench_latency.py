"""Batch-1 CPU latency: ONNX Runtime (hpe_bench.deploy.runtime settings) vs PyTorch eager, same thread count.

    python benchmarks/bench_latency.py                       # opnet, opnet_resnet18, trg, plain MobileNetV1
    python benchmarks/bench_latency.py --models opnet --repeats 5 --runs 300
    python benchmarks/bench_latency.py --models opnet --opnet-outputs quat,coord   # only the pose heads

Each model is exported untrained from conf/ (weights do not change the cost) with ``hpe_bench.export``, then
timed: warm-up, ``--runs`` sequential batch-1 calls, median and p90 per repeat. Over ``--repeats`` the table
shows the MIN of the per-repeat medians/p90s: on a shared machine other load only ever adds time, so the
smallest median is the best estimate of the unloaded latency. Repeats interleave the models, and
``plain_mobilenetv1`` (timm MobileNetV1 at 224 px, the issue's 3.9 ms reference) gives a same-conditions ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hpe_bench.deploy.runtime import make_session  # noqa: E402
from hpe_bench.deploy.wrappers import example_inputs, export_spec  # noqa: E402
from hpe_bench.export import build_model, compose_config, export_onnx  # noqa: E402

GOAL_MS = {"opnet": 3.0}  # issue 3, section 7: MobileNet OpNet with ONNX Runtime, 2 threads
PLAIN = "plain_mobilenetv1"  # --models name of the reference network (the "plain MobileNetV1")


def time_calls(fn, runs: int, warmup: int) -> tuple[np.ndarray, float]:
    """Wall milliseconds of ``runs`` sequential calls after ``warmup`` untimed ones, and the process CPU
    milliseconds per call (all threads; includes pool threads spinning while they wait for work)."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    cpu0 = time.process_time()
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times * 1e3, (time.process_time() - cpu0) * 1e3 / runs


def summarise(samples: list[tuple[np.ndarray, float]]) -> dict[str, float]:
    medians = [float(np.median(s)) for s, _ in samples]
    p90s = [float(np.percentile(s, 90)) for s, _ in samples]
    return {"median_ms": min(medians), "p90_ms": min(p90s), "cpu_ms": min(c for _, c in samples),
            "medians_ms": medians}


class PlainMobileNetV1(torch.nn.Module):
    """Reference point: timm ``mobilenetv1_100`` (ImageNet MobileNetV1, 569 M MACs at 224 px), dict in / dict out."""

    def __init__(self):
        super().__init__()
        import timm
        self.model = timm.create_model("mobilenetv1_100", pretrained=False)

    def forward(self, inputs):
        return {"logits": self.model(inputs["image"])}


def prepare(name: str, workdir: Path, args) -> dict:
    """Export one model and return its ORT session, eager net and batch-1 inputs."""
    if name == PLAIN:
        net = PlainMobileNetV1().eval()
        path = workdir / f"{name}.onnx"
        x = torch.randn(1, 3, 224, 224)
        torch.onnx.export(net.model, (x,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                          opset_version=args.opset)
        inputs, crop_size = {"image": x}, 224
    else:
        cfg = compose_config([f"model={name}"])
        net, crop = build_model(cfg, f"conf/model/{name}.yaml")
        net.eval()
        outputs = args.opnet_outputs.split(",") if (args.opnet_outputs and name.startswith("opnet")) else None
        path = workdir / f"{name}.onnx"
        export_onnx(net, crop, path, opset=args.opset, outputs=outputs, check=False, batch_size=1,
                    dynamic_batch=not args.static_batch)
        inputs, crop_size = example_inputs(crop, export_spec(net).inputs, batch_size=1, seed=1), int(crop.size)
    session = make_session(path, threads=args.threads, level=args.level, spinning=not args.no_spinning,
                           optimized_model_path=workdir / f"{name}.opt.onnx" if args.save_optimized else None)
    feed = {k: v.numpy() for k, v in inputs.items()}

    def torch_call():
        with torch.inference_mode():
            net(inputs)

    return {"name": name, "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "crop": crop_size,
            "calls": {"onnxruntime": lambda: session.run(None, feed), "pytorch eager": torch_call}}


def bench(models: list[dict], args) -> list[dict]:
    """Repeats interleave the models, so that load changes on a shared machine hit all of them alike."""
    torch.set_num_threads(args.threads)
    samples = {(m["name"], rt): [] for m in models for rt in m["calls"]}
    for _ in range(args.repeats):
        for m in models:
            for runtime, fn in m["calls"].items():
                samples[(m["name"], runtime)].append(time_calls(fn, args.runs, args.warmup))
    return [{"model": m["name"], "params_M": m["params_M"], "runtime": rt, "threads": args.threads,
             "crop": m["crop"], **summarise(samples[(m["name"], rt)])} for m in models for rt in m["calls"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="opnet,opnet_resnet18,trg,plain_mobilenetv1",
                   help=f"conf/model options, comma-separated; {PLAIN}: timm MobileNetV1 at 224 px (reference)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--level", default="all", help="ORT graph optimisation: disable | basic | extended | all")
    p.add_argument("--opnet-outputs", default="", help="export only these OpNet outputs (e.g. quat,coord)")
    p.add_argument("--static-batch", action="store_true", help="export with the batch axis fixed to 1")
    p.add_argument("--no-spinning", action="store_true", help="ORT pool threads sleep instead of spinning")
    p.add_argument("--save-optimized", action="store_true", help="also write <model>.opt.onnx (ORT's graph)")
    p.add_argument("--workdir", default=None, help="keep the exported models here (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = bench([prepare(name, workdir, args) for name in args.models.split(",")], args)

    load_after = os.getloadavg()
    print(f"\nbatch 1, {args.threads} threads, {args.runs} runs x {args.repeats} repeats (min over repeats), "
          f"ORT level {args.level}, opset {args.opset}, {'static' if args.static_batch else 'dynamic'} batch axis; "
          f"{os.cpu_count()} CPUs, 1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'model':<16}{'params':>8}{'crop':>6}  {'runtime':<15}{'median ms':>10}{'p90 ms':>9}{'cpu ms':>8}"
          "  medians per repeat")
    for r in rows:
        goal = GOAL_MS.get(r["model"]) if r["runtime"] == "onnxruntime" else None
        mark = f"  (goal <= {goal} ms: {'met' if r['median_ms'] <= goal else 'NOT met'})" if goal else ""
        meds = " ".join(f"{m:.2f}" for m in r["medians_ms"])
        print(f"{r['model']:<16}{r['params_M']:>7.2f}M{r['crop']:>6}  {r['runtime']:<15}{r['median_ms']:>10.2f}"
              f"{r['p90_ms']:>9.2f}{r['cpu_ms']:>8.2f}  {meds}{mark}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
