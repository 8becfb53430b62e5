"""`make bench`: one command, one JSON and one table of every speed figure hpe_bench reports
(docs/performance.md), each with the machine it ran on (CPU model, threads, torch version, load).

    python benchmarks/bench.py                      # opnet + trg, ~5-8 minutes on 2 CPU cores
    python benchmarks/bench.py --quick              # seconds-scale smoke version (the test suite runs it)
    python benchmarks/bench.py --json bench.json --models opnet

Sections: synthetic generation (images/s), loader throughput (samples/s through the datamodule's DataLoader),
train img/s per model as a pure step (``bench_train``: fp32, channels_last, fused Adam and, on CPUs with
native bfloat16, bf16 + channels_last and "all" = bf16 + channels_last + fused + float32 strided depthwise
convolutions; interleaved, medians) and
as the full pipeline (Lightning ``Trainer.fit`` over the loader, augmentation and crop included; in float32 and
with the fast switches in the precision ``trainer=fast`` measures for that model here, reported with its
bf16/fp32 ratio: ``train_pipeline_fast.precision_choice``), and batch-1
inference latency per model: PyTorch eager, ONNX Runtime float32 and int8 (static quantisation calibrated on
synthetic crops, ``hpe_bench.deploy.quantize``), interleaved, medians.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import bench_train  # noqa: E402


def synthetic_speed(n: int, size: int, workers: int) -> dict:
    from hpe_bench.data.synthetic import SyntheticDataset
    with tempfile.TemporaryDirectory() as tmp:
        ds = SyntheticDataset("train", n, seed=0, image_size=size, cache_dir=tmp, workers=workers)
        t0 = time.perf_counter()
        ds.prepare()
        dt = time.perf_counter() - t0
    return {"images": n, "image_size": size, "workers": workers, "seconds": dt, "images_per_s": n / dt}


def loader_speed(model: str, batch: int, batches: int, workers: int) -> dict:
    """Samples/s of the synthetic training loader (decode + labels + collate), first batch excluded."""
    from hydra.utils import instantiate

    from hpe_bench.export import compose_config
    cfg = compose_config([f"model={model}", "logger=none", f"data.num_workers={workers}", f"data.batch_size={batch}",
                          f"data.train.num_samples={batch * (batches + 1)}", "data.val.num_samples=1",
                          "data.test.num_samples=1"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b["sample_id"]) for b in it)
    dt = time.perf_counter() - t0
    return {"batch": batch, "workers": workers, "samples": n, "samples_per_s": n / dt}


def pipeline_speed(model: str, batch: int, steps: int, workers: int, fast: bool = False) -> dict:
    """Full-pipeline training img/s: Lightning fit (loader, on-device augmentation, crop, net, loss, optimizer),
    timed from the end of the first step to the end of the last (start-up excluded). ``fast``: with the speed
    switches (channels_last, fused optimizer, float32 strided depthwise convs) and the precision ``trainer=fast``
    chooses for this model on this CPU (``hpe_bench.precision.decide``, measured afresh; ``precision_choice``)."""
    import lightning as L
    from hydra.utils import instantiate

    from hpe_bench.export import compose_config

    class Clock(L.Callback):
        def __init__(self):
            self.t = []

        def on_train_batch_end(self, *args, **kwargs):
            self.t.append(time.perf_counter())

    switches = ["model.channels_last=true", "+model.optimizer.fused=true",
                "model.fp32_strided_depthwise=true"] if fast else []
    cfg = compose_config([f"model={model}", "logger=none", f"data.num_workers={workers}", f"data.batch_size={batch}",
                          f"data.train.num_samples={batch * steps}", "data.val.num_samples=1",
                          "data.test.num_samples=1", *switches])
    module = instantiate(cfg.model, loss=instantiate(cfg.loss),
                         augment=instantiate(cfg.augment) if cfg.get("augment") else None, euler_rule="trg")
    datamodule = instantiate(cfg.data)
    choice = None
    if fast:  # what `trainer=fast` picks for this model here: timed afresh, the cache neither read nor written
        from hpe_bench.precision import config_key, decide
        choice = decide(module, datamodule, config_key(cfg), rounds=3 if steps > 2 else 1, cache_dir=None)
    precision = choice["precision"] if choice else "32-true"
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            callbacks=[clock], default_root_dir=tmp)
        trainer.fit(module, datamodule=datamodule)
    dt = clock.t[-1] - clock.t[0]
    n = batch * (len(clock.t) - 1)
    row = {"batch": batch, "steps": len(clock.t), "precision": precision, "switches": switches,
           "img_per_s": n / dt if n else float("nan")}
    return row | ({"precision_choice": choice} if choice else {})


def inference_latency(model: str, runs: int, repeats: int, calib_batches: int, threads: int,
                      run_dir: str | None = None, eval_batches: int = 4) -> dict:
    """Batch-1 latency (ms, median of repeats' medians): eager, ONNX float32, ONNX int8, interleaved; and the
    accuracy change int8 costs on the synthetic test split (``eval_batches`` batches of 8: int8 vs float32
    predictions of the same weights, and each against the labels where the net outputs a camera-frame ``R``).
    ``run_dir``: a trained run (its config and ``checkpoints/last.ckpt``); else seeded untrained weights."""
    from bench_latency import time_calls
    from hydra.utils import instantiate

    from hpe_bench.deploy.quantize import compare_predictions, network_input_batches, quantize_int8
    from hpe_bench.deploy.runtime import make_session
    from hpe_bench.deploy.wrappers import example_inputs, export_spec
    from hpe_bench.export import (build_model, compose_config, export_onnx, export_quantizable, load_net_weights,
                                  load_run_config)
    sizes = {"data.num_workers": 0, "data.batch_size": 8, "data.train.num_samples": 8 * calib_batches,
             "data.val.num_samples": 1, "data.test.num_samples": 8 * eval_batches}
    if run_dir:
        cfg, _ = load_run_config(pathlib.Path(run_dir))
        for k, v in sizes.items():
            OmegaConf.update(cfg, k, v)
        net, crop = build_model(cfg, str(run_dir))
        load_net_weights(net, pathlib.Path(run_dir) / "checkpoints" / "last.ckpt")
    else:
        torch.manual_seed(0)
        cfg = compose_config([f"model={model}", *(f"{k}={v}" for k, v in sizes.items())])
        net, crop = build_model(cfg, f"conf/model/{model}.yaml")
    net.eval()
    spec = export_spec(net)
    names = spec.inputs
    inputs = example_inputs(crop, names, batch_size=1, seed=1)
    feed = {k: v.numpy() for k, v in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = pathlib.Path(tmp) / f"{model}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(net, crop, fp32, check=False, batch_size=1)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source, rewrites = export_quantizable(net, crop, pathlib.Path(tmp) / "int8_source.onnx", batch_size=1)
        int8 = quantize_int8(source, fp32.with_suffix(".int8.onnx"),
                             network_input_batches(crop, dm.train_dataloader(), names, calib_batches))
        s32, s8 = make_session(fp32, threads=threads), make_session(int8, threads=threads)

        def eager():
            with torch.inference_mode():
                net(inputs)

        calls = {"eager": eager, "onnx_fp32": lambda: s32.run(None, feed), "onnx_int8": lambda: s8.run(None, feed)}
        samples = {k: [] for k in calls}
        for _ in range(repeats):
            for k, fn in calls.items():
                samples[k].append(float(np.median(time_calls(fn, runs, max(2, runs // 10))[0])))
        dm.setup("test")
        labels: list = []
        test = list(network_input_batches(crop, dm.test_dataloader(), names, eval_batches, labels))
        onames = [o.name for o in s32.get_outputs()]
        preds = {k: [dict(zip(onames, sess.run(None, f))) for f in test] for k, sess in (("fp32", s32), ("int8", s8))}
        out_names = {n: key for n, (key, _) in spec.outputs.items() if n in onames}
        change = compare_predictions(preds["fp32"], preds["int8"], out_names, "trg", labels)
    row = {f"{k}_ms": float(np.median(v)) for k, v in samples.items()}
    row["int8_vs_fp32"] = row["onnx_int8_ms"] / row["onnx_fp32_ms"]
    row["weights"] = str(run_dir) if run_dir else "untrained (seed 0)"
    row["int8_graph_rewrites"] = rewrites
    from hpe_bench.deploy.quantize import needs_reduce_range
    row["int8_reduce_range"] = needs_reduce_range()
    row["int8_accuracy_change"] = {k: v for k, v in change.items() if not k.startswith("mean_abs_diff/")}
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="opnet,trg")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every section")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--malloc", choices=("glibc", "tuned"), default="tuned",
                   help="allocator of this process: tuned as hpe_bench runs do (conf/config.yaml malloc), or glibc's")
    p.add_argument("--runs", default="", help="trained runs for the latency/int8 section, model=run_dir[,...] "
                   "(e.g. opnet=outputs/runs/opnet/<time>); other models use seeded untrained weights")
    args = p.parse_args(argv)
    trained = dict(item.split("=", 1) for item in args.runs.split(",") if item)
    torch.set_num_threads(args.threads)
    if args.malloc == "tuned":  # what every `python -m hpe_bench` run applies (conf/config.yaml malloc)
        bench_train.apply_run_malloc()
    q = args.quick
    models = ["opnet"] if q and args.models == "opnet,trg" else args.models.split(",")
    load0 = os.getloadavg()[0]
    from hpe_bench.hardware import cpu_has_native_bf16
    # bf16 only where the CPU has it: emulated bfloat16 convolutions are many times slower (docs/performance.md)
    native_bf16 = cpu_has_native_bf16()
    variants = (["fp32", "cl"] + (["bf16_cl"] if native_bf16 else []) + ([] if q else ["fused"])
                + (["bf16+cl+fused+dw32"] if native_bf16 and not q else []))  # "all": every switch at once
    t_start = time.perf_counter()
    out = {"machine": bench_train.machine() | {"threads": args.threads, "malloc": args.malloc}, "quick": q,
           "synthetic": synthetic_speed(8 if q else 1000, 256, 2),
           "loader": loader_speed(models[0], 8 if q else 32, 2 if q else 8, 0 if q else 2),
           "models": {}}
    for m in models:
        step = bench_train.bench_model(m, variants, 4 if q else 32, 1 if q else 4, 1, "cpu")
        out["models"][m] = {
            "train_step": {v: r["img_per_s"] for v, r in step["variants"].items()} | {"batch": step["batch"]},
            "train_pipeline": pipeline_speed(m, 4 if q else 32, 2 if q else 6, 0 if q else 2),
            "train_pipeline_fast": pipeline_speed(m, 4 if q else 32, 2 if q else 6, 0 if q else 2, fast=True),
            "inference_batch1": inference_latency(m, 5 if q else 100, 1 if q else 3, 1 if q else 4, args.threads,
                                                  trained.get(m), 1 if q else 4),
        }
    out["train_step_variants"] = variants
    out["machine"]["load_avg_1min_before"] = round(load0, 2)
    out["machine"]["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    out["wall_s"] = time.perf_counter() - t_start
    print(json.dumps(out, indent=1))
    mc = out["machine"]
    print(f"\n{mc['cpu']}, {mc['threads']} threads of {mc['cpus']} CPUs, torch {mc['torch']}, load "
          f"{mc['load_avg_1min_before']} -> {mc['load_avg_1min_after']}, {out['wall_s']:.0f} s")
    print(f"synthetic generation {out['synthetic']['images_per_s']:.1f} img/s; loader "
          f"{out['loader']['samples_per_s']:.1f} samples/s")
    print("trainer=fast precision (its own measurement: training step of each model, batch "
          f"{'4' if q else '32'}, with the fast switches):")
    for m, r in out["models"].items():
        c = r["train_pipeline_fast"]["precision_choice"]
        ratio = c.get("ratio_vs_fp32", {}).get("bf16-mixed")
        load = c.get("cpu_load") or {}
        print(f"  {m:<18} -> {c['precision']:<11}" + (f" bf16/fp32 {ratio:.2f}x ({c['img_per_s']['bf16-mixed']:.1f} vs "
              f"{c['img_per_s']['32-true']:.1f} img/s, {c['seconds']:.1f} s)" if ratio else f" ({c['source']})")
              + ("" if c.get("rounds_agree", True) else ", rounds disagreed twice")
              + (f", other processes used {100 * load['elsewhere']:.0f}% of the CPUs meanwhile" if load.get("contended") else ""))
    label = {"bf16+cl+fused+dw32": "all"}
    print(f"{'model':<10}" + "".join(f"{'step ' + label.get(v, v):>13}" for v in variants)
          + f"{'pipeline':>10}{'fast':>7}{'eager ms':>10}{'onnx ms':>9}{'int8 ms':>9}{'int8/fp32':>10}{'int8 geo':>9}"
          "   (img/s, ms; int8 geo: deg between int8 and fp32 rotations, synthetic test)")
    for m, r in out["models"].items():
        s, i = r["train_step"], r["inference_batch1"]
        print(f"{m:<10}" + "".join(f"{s[v]:>13.1f}" for v in variants)
              + f"{r['train_pipeline']['img_per_s']:>10.1f}{r['train_pipeline_fast']['img_per_s']:>7.1f}{i['eager_ms']:>10.2f}{i['onnx_fp32_ms']:>9.2f}"
              f"{i['onnx_int8_ms']:>9.2f}{i['int8_vs_fp32']:>10.2f}"
              f"{i['int8_accuracy_change'].get('geodesic_deg', float('nan')):>9.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
