"""Training-step speed of the speed switches, side by side: variants interleaved in one process (A, B, C, A, B,
C, ... one optimizer step each), medians, so that other load on a shared machine hits every variant alike and the
ratios stay meaningful (docs/performance.md).

    python benchmarks/bench_train.py                                  # opnet + trg, every variant, batch 32
    python benchmarks/bench_train.py --models opnet --batch 64 --steps 10 --variants fp32,bf16,bf16_cl

Each variant is the real ``HeadPoseModule.training_step`` (augmentation, crop, net, loss) + backward + optimizer
step on one fixed synthetic batch, with its own copy of the same initial weights:
  fp32      trainer.precision=32-true (the default)
  bf16      trainer.precision=bf16-mixed (autocast around the step, as Lightning does)
  cl        model.channels_last=true
  bf16_cl   both
  fused     +model.optimizer.fused=true (fused Adam kernel; the default runs one kernel per parameter on CPU)
  foreach   model.optimizer.foreach=true
  compile   model.compile=true (torch.compile; the first steps compile and are excluded as warm-up)
  dw32      model.fp32_strided_depthwise=true (strided depthwise convolutions in float32 under CPU autocast;
            on by default in conf/, off in every other variant here so that its effect shows)
Variants combine with "+": ``bf16+cl+fused`` is all three. ``--overrides`` adds Hydra overrides to every model's
config (``--overrides "model.net.backbone=resnet10t model.crop.size=64"``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = {  # name -> (autocast, channels_last, optimizer kwargs, compile, HeadPoseModule kwargs)
    "fp32": (False, False, {}, False, {}),
    "bf16": (True, False, {}, False, {}),
    "cl": (False, True, {}, False, {}),
    "bf16_cl": (True, True, {}, False, {}),
    "fused": (False, False, {"fused": True}, False, {}),
    "foreach": (False, False, {"foreach": True}, False, {}),
    "compile": (False, False, {}, True, {}),
    "dw32": (False, False, {}, False, {"fp32_strided_depthwise": True}),
}
MODEL_OVERRIDES = {"opnet": ["model=opnet"], "trg": ["model=trg"], "direct_regression": ["model=direct_regression"]}


def machine() -> dict:
    """What the numbers were measured on."""
    name = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def apply_run_malloc() -> dict:
    """Apply the allocator settings of ``conf/config.yaml`` (``malloc``) to this process, as ``hpe_bench.run``
    does; returns them."""
    from omegaconf import OmegaConf

    from hpe_bench.hardware import tune_malloc
    settings = OmegaConf.to_container(OmegaConf.load(pathlib.Path(__file__).resolve().parents[1] / "conf" / "config.yaml").malloc)
    if not tune_malloc(**settings):
        print("warning: no glibc mallopt here; allocator left as it is", file=sys.stderr)
    return settings


def variant_parts(name: str) -> tuple[bool, bool, dict, bool, dict]:
    """``(autocast, channels_last, optimizer kwargs, compile, module kwargs)`` of a variant name or a "+"
    combination."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)} (combine with '+')")
    specs = [VARIANTS[p] for p in parts]
    return (any(s[0] for s in specs), any(s[1] for s in specs), {k: v for s in specs for k, v in s[2].items()},
            any(s[3] for s in specs), {k: v for s in specs for k, v in s[4].items()})


def fixed_batch(model: str, batch_size: int, image_size: int = 256, overrides: tuple[str, ...] = ()) -> tuple[dict, object]:
    """One training batch of the synthetic dataset (rendered into the cache once) and the composed config."""
    from hpe_bench.export import compose_config
    from hydra.utils import instantiate
    cfg = compose_config([*MODEL_OVERRIDES.get(model, [f"model={model}"]), *overrides, "logger=none", "data.num_workers=0",
                          f"data.batch_size={batch_size}", f"data.train.num_samples={batch_size}",
                          f"data.train.image_size={image_size}", "data.val.num_samples=1", "data.test.num_samples=1"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), cfg


def build_variant(cfg, name: str, state: dict | None, device: str):
    """(module, optimizer, autocast flag) for one variant, starting from ``state`` (shared initial weights)."""
    from hydra.utils import instantiate
    autocast, channels_last, opt_kwargs, compile_, module_kwargs = variant_parts(name)
    module_kwargs = {"fp32_strided_depthwise": False} | module_kwargs  # on in conf/ by default: only "dw32" turns it on
    module = instantiate(cfg.model, loss=instantiate(cfg.loss), augment=instantiate(cfg.augment) if cfg.get("augment")
                         else None, euler_rule="trg", channels_last=channels_last, compile=compile_, **module_kwargs)
    if state is not None:
        module.load_state_dict(state)
    module.to(device).train()
    if channels_last:
        module.net.to(memory_format=torch.channels_last)
    if compile_:
        module.net.compile()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = module.optimizer_factory(params, **opt_kwargs)
    return module, optimizer, autocast


def one_step(module, optimizer, autocast: bool, batch: dict, device: str) -> float:
    """Wall seconds of one training step (the step Lightning runs, without its logging)."""
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step(batch, 0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_model(model: str, variants: list[str], batch_size: int, steps: int, warmup: int, device: str,
                overrides: tuple[str, ...] = ()) -> dict:
    batch, cfg = fixed_batch(model, batch_size, overrides=overrides)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.manual_seed(0)
    ref, _, _ = build_variant(cfg, "fp32", None, "cpu")
    state = copy.deepcopy(ref.state_dict())
    runs = {v: build_variant(cfg, v, state, device) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    first_loss = {}
    for v, (m, _, ac) in runs.items():  # the same first loss (same weights, same batch): only precision differs
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=ac), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(1)
            first_loss[v] = float(m.training_step(batch, 0))
    for i in range(warmup + steps):
        for v in variants:  # interleaved: A, B, C, A, B, C, ...
            torch.manual_seed(i)  # same augmentation draw for every variant
            dt = one_step(*runs[v], batch, device)
            if i >= warmup:
                times[v].append(dt)
    base = float(np.median(times[variants[0]]))
    rows = {}
    for v in variants:
        med = float(np.median(times[v]))
        rows[v] = {"img_per_s": batch_size / med, "median_step_s": med, "speedup_vs_" + variants[0]: base / med,
                   "first_loss": first_loss[v], "steps": steps}
    return {"model": model, "batch": batch_size, "device": device, "overrides": list(overrides), "variants": rows}


def profile_step(model: str, variant: str, batch_size: int, device: str, rows: int = 25,
                 overrides: tuple[str, ...] = ()) -> str:
    """torch.profiler table (self CPU time) of one training step after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile
    batch, cfg = fixed_batch(model, batch_size, overrides=overrides)
    run = build_variant(cfg, variant, None, device)
    one_step(*run, batch, device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        one_step(*run, batch, device)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def print_table(results: list[dict]) -> None:
    print(f"{'model':<20}{'variant':<10}{'img/s':>9}{'step s':>9}{'ratio':>8}{'first loss':>12}")
    for r in results:
        for v, row in r["variants"].items():
            ratio = next(val for k, val in row.items() if k.startswith("speedup_vs_"))
            print(f"{r['model']:<20}{v:<10}{row['img_per_s']:>9.1f}{row['median_step_s']:>9.3f}{ratio:>8.2f}"
                  f"{row['first_loss']:>12.4f}")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="opnet,trg")
    p.add_argument("--variants", default="fp32,bf16,cl,bf16_cl,fused", help=f"from {', '.join(VARIANTS)}; "
                   "the first is the reference of the ratios")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--overrides", default="", help="Hydra overrides for every model, space-separated")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step of the first "
                   "variant per model instead of timing the variants")
    p.add_argument("--malloc", choices=("glibc", "tuned"), default="glibc", help="tuned: for the whole process, "
                   "the allocator settings every `python -m hpe_bench` run applies (conf/config.yaml malloc)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        apply_run_malloc()
    variants = args.variants.split(",")
    for v in variants:
        variant_parts(v)  # exits on an unknown name before any work
    overrides = tuple(args.overrides.split())
    if args.profile:
        for m in args.models.split(","):
            print(f"== {m}, {variants[0]}, batch {args.batch}")
            print(profile_step(m, variants[0], args.batch, args.device, overrides=overrides))
        return []
    load0 = os.getloadavg()[0]
    results = [bench_model(m, variants, args.batch, args.steps, args.warmup, args.device, overrides)
               for m in args.models.split(",")]
    info = machine() | {"load_avg_1min_before": round(load0, 2), "malloc": args.malloc}
    print(json.dumps({"machine": info, "train_step": results}, indent=1))
    print_table(results)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "train_step": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
