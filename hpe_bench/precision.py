"""``trainer=fast`` on a CPU: the precision chosen by measuring the run's own training step.

Whether bfloat16 autocast speeds a CPU up is not written in its flags. With AMX it ran ~2x float32 (OpNet, TRG);
with AVX512-BF16 alone it ran the demo's step at 1.5x on an AMD EPYC (Zen 4) and at 0.88x on an Intel Xeon
(docs/performance.md). So ``conf/trainer/fast.yaml`` resolves to ``trainer.precision=measure`` on a CPU
(``hardware.fast_precision``), and before the Trainer is built ``hpe_bench/run.py`` calls ``settle_precision``,
which

1. offers ``bf16-mixed`` only where the CPU has native bfloat16 (``avx512_bf16`` / ``amx_bf16``), else keeps
   ``32-true`` without timing anything (emulated bfloat16 is several times slower);
2. reuses a verdict cached for the same CPU (model name, family/model/stepping, precision flags), torch
   version, thread count, model/loss/augmentation config and batch size (``<paths.cache_dir>/precision/<key>.json``);
3. else times the run's own training step (``HeadPoseModule.training_step``: augmentation, crop, net, loss;
   backward; the module's optimizer step) on one real training batch of the run's batch size, in each candidate
   (bf16: ``torch.autocast("cpu", torch.bfloat16)`` around the step, as Lightning's ``bf16-mixed``),
   interleaved (fp32, bf16, bf16, fp32, ...), after ``warmup`` steps each;
4. keeps ``bf16-mixed`` only when the median over rounds of its speed relative to float32 in the same round is
   at least ``margin`` (1.05), so that noise never picks a slower precision (``choose_precision``). A verdict
   needs rounds that agree (all on one side of the margin); when they do not (load from other processes, or a
   close call) the rounds are timed once more, and if those disagree too the run takes ``32-true``, the choice
   that is never slower than float32, without caching it. Nor is a verdict cached that was timed while other
   processes took this process's cores (``cpu_contention``): the next run times again. The run logs the choice and the ratio and records
   them in run_info.json (``precision_choice``).

The measurement leaves the module as it found it (weights, buffers such as BatchNorm statistics and the mean-pose
sums, no gradients) and the random number generators too: a run trains the same with a cached verdict as with
a fresh one. Options: ``precision_probe`` in conf/config.yaml.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import statistics
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from . import hardware
from .outputs import write_json

log = logging.getLogger(__name__)

REFERENCE = "32-true"
BF16 = "bf16-mixed"
CANDIDATES = (REFERENCE, BF16)
MARGIN = 1.05  # bf16 must be at least this much faster than float32 to be chosen
CACHE_VERSION = 1  # bump when what is measured changes: older verdicts are then measured again
# model keys that do not change a training step's speed (left out of the cache key)
_NOT_SPEED = ("optimizer", "scheduler", "callbacks", "total_samples", "grad_clip_max_norm", "grad_clip_norm_type")


def choose_precision(img_per_s: Mapping[str, float], margin: float = MARGIN, reference: str = REFERENCE) -> str:
    """The fastest candidate when it is at least ``margin`` times as fast as ``reference``, else ``reference``.
    ``img_per_s``: speeds, or speeds relative to the reference's.

    >>> choose_precision({"32-true": 100.0, "bf16-mixed": 104.0})
    '32-true'
    >>> choose_precision({"32-true": 100.0, "bf16-mixed": 150.0})
    'bf16-mixed'
    """
    base = img_per_s[reference]
    best = max(img_per_s, key=lambda c: img_per_s[c])
    return best if best != reference and img_per_s[best] >= margin * base else reference


def candidates(requested: Sequence[str] = CANDIDATES) -> list[str]:
    """``requested`` less the precisions this CPU would only emulate (bf16 without AVX512-BF16 / AMX)."""
    unknown = [c for c in requested if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"precision_probe: unknown candidate precisions {unknown}; choose from {list(CANDIDATES)}")
    out = [REFERENCE] + [c for c in requested if c != REFERENCE]
    return [c for c in out if c != BF16 or hardware.cpu_has_native_bf16()]


def time_candidates(step: Callable[[str], None], names: Sequence[str], warmup: int = 1, rounds: int = 3,
                    timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of ``step(name)`` per candidate: ``warmup`` untimed calls each, then ``rounds`` timed ones,
    interleaved (A, B, B, A, A, B, ...: the order alternates so neither always runs first)."""
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + rounds):
        for name in (names if i % 2 == 0 else list(reversed(names))):
            t0 = timer()
            step(name)
            dt = timer() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


def round_ratios(times: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Per round, each candidate's speed relative to float32's in the same round (float32 seconds / its seconds):
    paired, so that load which comes and goes hits both sides of a ratio alike."""
    ref = times[REFERENCE]
    return {c: [r / t for r, t in zip(ref, ts)] for c, ts in times.items()}


def agreed(times: Mapping[str, list[float]], margin: float = MARGIN) -> bool:
    """Whether every round puts each candidate on the same side of the margin."""
    return all(len({r >= margin for r in rs}) <= 1 for c, rs in round_ratios(times).items() if c != REFERENCE)


def summarise(times: Mapping[str, list[float]], batch_size: int, margin: float = MARGIN) -> dict[str, Any]:
    """The choice (on the median per-round ratio to float32), that ratio, img/s (batch / median step seconds)
    and the step times per candidate."""
    per_round = round_ratios(times)
    ratio = {c: statistics.median(rs) for c, rs in per_round.items()}
    return {"precision": choose_precision(ratio, margin), "ratio_vs_fp32": ratio, "margin": margin,
            "rounds_agree": agreed(times, margin),
            "img_per_s": {c: batch_size / statistics.median(t) for c, t in times.items()},
            "step_s": {c: list(t) for c, t in times.items()}, "round_ratios": per_round}


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy ticks of all CPUs incl. the hypervisor's steal, all ticks, this process's ticks), Linux only."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()  # after the command name: field 3 (state) onwards
    except (OSError, ValueError, IndexError):
        return None
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total, int(own[11]) + int(own[12])  # utime + stime, every thread


@contextmanager
def cpu_contention() -> Iterator[dict[str, Any]]:
    """Yields a dict filled on exit: ``elsewhere``, the share of all CPUs' time other processes (and the
    hypervisor, as steal) used during the block (None where ``/proc/stat`` is missing), ``own_utilisation``,
    this process's CPU time over wall time x torch threads, and ``contended``: both say that this process's
    threads shared their cores (elsewhere > 0.1 and own utilisation < 0.8). On the 2-core development
    machine: 0.004 and 1.0 idle; 0.43-0.57 and 0.43-0.57 beside a training run or a busy loop."""
    out: dict[str, Any] = {"elsewhere": None, "own_utilisation": None, "contended": False}
    start, wall, cpu = _cpu_ticks(), time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        end, wall, cpu = _cpu_ticks(), time.perf_counter() - wall, time.process_time() - cpu
        if wall > 0:
            out["own_utilisation"] = cpu / (wall * torch.get_num_threads())
        if start is not None and end is not None and end[1] > start[1]:
            busy, total, own = (e - s for e, s in zip(end, start))
            out["elsewhere"] = max(0.0, (busy - own) / total)
        out["contended"] = bool(out["elsewhere"] is not None and out["elsewhere"] > 0.1
                                and out["own_utilisation"] is not None and out["own_utilisation"] < 0.8)


@contextmanager
def _rng_kept() -> Iterator[None]:
    """Restore torch's, numpy's and Python's random states on exit (the measurement draws augmentations)."""
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def one_train_batch(datamodule) -> dict[str, Any]:
    """The first batch of the datamodule's training loader (prepared first: Lightning's own ``prepare_data`` /
    ``setup`` afterwards find the cache in place), read in this process without starting loader workers."""
    from torch.utils.data import DataLoader
    datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    if getattr(loader, "batch_size", None):
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)
    return next(iter(loader))


def measure(module, batch: Mapping[str, Any], names: Sequence[str], warmup: int = 2, rounds: int = 3,
            timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per training step of ``module`` on ``batch`` in each precision of ``names`` (CPU):
    ``module.training_step``, backward, and a step of the module's optimizer (``optimizer_factory``, float32 in
    every precision: it dilutes the ratio as it does in training). The module's state (weights, buffers), its
    gradients and the random states are restored."""
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    was_training = module.training
    module.train()
    factory = getattr(module, "optimizer_factory", None)
    optimizer = factory([p for p in module.parameters() if p.requires_grad]) if callable(factory) else None

    def step(name: str) -> None:
        torch.manual_seed(0)  # the same augmentation draw in every candidate
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == BF16), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer
            loss = module.training_step(batch, 0)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        module.zero_grad(set_to_none=True)

    try:
        with _rng_kept():
            return time_candidates(step, names, warmup, rounds, timer)
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)
        module.train(was_training)


def config_key(cfg) -> dict[str, Any]:
    """What of a run's config decides its step speed: model (less optimizer, schedule, run length), loss,
    augmentation, batch size."""
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    model = plain(cfg.get("model")) or {}
    return {"model": {k: v for k, v in model.items() if k not in _NOT_SPEED}, "loss": plain(cfg.get("loss")),
            "augment": plain(cfg.get("augment")), "batch_size": plain(cfg.data.get("batch_size"))}


def cache_key(config: Mapping[str, Any], names: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(file stem, what it hashes): the CPU, torch, threads, candidates and the speed-relevant config."""
    keyed = {"version": CACHE_VERSION, "cpu": hardware.cpu_identity(), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "candidates": list(names), "config": config}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return digest, keyed


def _read_cached(path: Path) -> dict[str, Any] | None:
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("precision") in CANDIDATES else None


def decide(module, datamodule, config: Mapping[str, Any], *, requested: Sequence[str] = CANDIDATES,
           warmup: int = 2, rounds: int = 3, margin: float = MARGIN, cache_dir: str | Path | None = None,
           remeasure: bool = False, timer: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """The precision verdict for ``module`` on this CPU: from the cache, else measured (and cached when its rounds
    agree), or ``32-true`` unmeasured where the CPU has no native bfloat16. ``cache_dir=None``: neither read
    nor write."""
    cpu = hardware.cpu_identity()
    names = candidates(requested)
    base = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(), "candidates": names}
    if len(names) == 1:
        return base | {"precision": REFERENCE, "source": "no native bfloat16 (avx512_bf16 / amx_bf16): not measured"}
    key, keyed = cache_key(config, names)
    path = Path(cache_dir) / "precision" / f"{key}.json" if cache_dir is not None else None
    if path is not None and not remeasure and (cached := _read_cached(path)) is not None:
        return cached | {"source": "cached", "cache_file": str(path)}
    batch = one_train_batch(datamodule)
    batch_size = len(batch["sample_id"]) if "sample_id" in batch else int(config.get("batch_size") or 0)
    t0 = time.perf_counter()
    with cpu_contention() as load:
        times, discarded = measure(module, batch, names, warmup, rounds, timer), None
        if not agreed(times, margin):  # load from another process, or a close call: time the rounds once more
            discarded, times = times, measure(module, batch, names, 0, rounds, timer)
    verdict = base | summarise(times, batch_size, margin) | {"cpu_load": load}
    if not verdict["rounds_agree"]:  # twice: no reliable verdict, so the precision that is never slower
        verdict["precision"] = REFERENCE
    if discarded is not None:
        verdict["discarded_round_ratios"] = round_ratios(discarded)
    verdict |= {
        "batch_size": batch_size, "warmup": warmup, "rounds": rounds, "tries": 1 if discarded is None else 2,
        "seconds": time.perf_counter() - t0,
        "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "key": key,
        "config_sha256": hashlib.sha256(json.dumps(keyed["config"], sort_keys=True, default=str).encode()).hexdigest(),
        "source": "measured"}
    if path is not None and load["contended"]:
        log.info("precision verdict not cached: other processes used %.0f%% of the CPUs while it was timed (this "
                 "process %.0f%% of its threads' time)", 100 * load["elsewhere"], 100 * load["own_utilisation"])
    elif path is not None and not verdict["rounds_agree"]:
        log.info("precision verdict not cached: its rounds disagreed twice (bf16/fp32 per round %s, then %s)",
                 " ".join(f"{r:.2f}" for r in verdict["discarded_round_ratios"].get(BF16, [])),
                 " ".join(f"{r:.2f}" for r in verdict["round_ratios"].get(BF16, [])))
    elif path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, verdict)
            verdict["cache_file"] = str(path)
        except OSError as err:  # a read-only cache costs a measurement per run, nothing else
            log.warning("could not cache the precision verdict in %s: %s", path, err)
    return verdict


def describe(verdict: Mapping[str, Any]) -> str:
    """One line for the log: the choice, the measured ratio, where it comes from."""
    cpu = verdict.get("cpu", {})
    where = f"{cpu.get('model_name', 'this CPU')} (family {cpu.get('family', '?')} model {cpu.get('model', '?')}, " \
            f"{'+'.join(f for f in cpu.get('flags', []) if 'bf16' in f or 'amx' in f) or 'no bf16/amx flags'}), " \
            f"{verdict.get('threads')} threads"
    ratio = verdict.get("ratio_vs_fp32", {}).get(BF16)
    if ratio is None:
        return f"trainer=fast: {verdict['precision']} on {where}: {verdict.get('source')}"
    ips = verdict["img_per_s"]
    how = (f"measured in {verdict['seconds']:.1f} s, {verdict.get('rounds')} rounds"
           + ("" if verdict.get("tries", 1) == 1 else " (timed twice: the first rounds disagreed)")
           + ("" if verdict.get("rounds_agree", True) else ", disagreeing again: float32, not cached")
           + (f", other processes busy ({100 * verdict['cpu_load']['elsewhere']:.0f}% of the CPUs): not cached"
              if (verdict.get("cpu_load") or {}).get("contended") else "")
           if verdict.get("source") == "measured" else f"cached {verdict.get('measured_utc')}, {verdict.get('cache_file')}")
    return (f"trainer=fast: bf16-mixed {ratio:.2f}x float32 ({ips[BF16]:.1f} vs {ips[REFERENCE]:.1f} img/s, "
            f"batch {verdict.get('batch_size')}, margin {verdict.get('margin')}) on {where}, {how} -> "
            f"{verdict['precision']}")


def _processes(trainer_cfg) -> int:
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, int):
        return devices * nodes if devices > 0 else 2  # -1: every CPU core's process
    if str(devices) in ("auto", "1"):
        return nodes
    return 2 if not str(devices).isdigit() else int(str(devices)) * nodes  # a list or "-1" / "0,1": several


def settle_precision(cfg, datamodule, module, info: dict[str, Any]) -> bool:
    """Where ``cfg.trainer.precision`` is ``measure`` (``trainer=fast`` on a CPU), replace it by the chosen
    precision, log the choice and the measured ratio, and record them in ``info`` (run_info.json:
    ``precision_choice``, and the chosen ``trainer.precision`` in its config). Returns whether it did.

    Resumed runs keep the precision their first run recorded. Runs of several processes (DDP) and runs that
    do not train take ``32-true`` unmeasured: every process must come to the same choice, and timing a training
    step says nothing about testing."""
    if OmegaConf.select(cfg, "trainer.precision") != hardware.MEASURE:
        return False
    probe = cfg.get("precision_probe") or {}
    first = ((info.get("config") or {}).get("trainer") or {}).get("precision")
    if info.get("resumes") and first not in (None, hardware.MEASURE):
        verdict = {"precision": first, "source": "resumed: the first run's precision"}
    elif not cfg.get("train", True):
        verdict = {"precision": REFERENCE, "source": "train=false: not measured"}
    elif str(cfg.trainer.get("accelerator", "auto")) in ("gpu", "cuda") or (
            str(cfg.trainer.get("accelerator", "auto")) == "auto" and torch.cuda.is_available()):
        verdict = {"precision": hardware.gpu_precision(), "source": "GPU: its mixed precision, not measured"}
    elif _processes(cfg.trainer) > 1:
        verdict = {"precision": REFERENCE, "source": "several processes: not measured (each would time alone)"}
    else:
        verdict = decide(module, datamodule, config_key(cfg), requested=list(probe.get("candidates", CANDIDATES)),
                         warmup=int(probe.get("warmup", 2)), rounds=int(probe.get("rounds", 3)),
                         margin=float(probe.get("margin", MARGIN)), cache_dir=OmegaConf.select(cfg, "paths.cache_dir"),
                         remeasure=bool(probe.get("remeasure", False)))
    cfg.trainer.precision = verdict["precision"]
    log.info("%s", describe(verdict | {"cpu": verdict.get("cpu") or hardware.cpu_identity(),
                                       "threads": verdict.get("threads", torch.get_num_threads())}))
    info["precision_choice"] = verdict
    config = info.get("config")
    if isinstance(config, dict) and isinstance(config.get("trainer"), dict) \
            and config["trainer"].get("precision") == hardware.MEASURE:
        config["trainer"]["precision"] = verdict["precision"]
    return True
