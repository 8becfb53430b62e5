"""Fit then test one configuration; write the run outputs (docs/outputs.md). Called by ``__main__``."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .cluster import RandomState, fit_ckpt_path, keep_wandb_id, requeued
from .hardware import tune_malloc
from .metrics.registry import METRICS, NUM_SAMPLES, format_value
from . import protocol_test as PT
from . import wandb_logging as WL
from .outputs import check_writable, run_info, write_json, write_parquet
from .precision import settle_precision

log = logging.getLogger(__name__)


def output_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under @hydra.main (e.g. called from a notebook)
        return Path.cwd()


def group_choices() -> dict[str, Any]:
    try:
        choices = HydraConfig.get().runtime.choices
        return {k: v for k, v in choices.items() if not k.startswith("hydra")}
    except ValueError:
        return {}


def build_list(cfg: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a name -> config mapping (loggers, callbacks)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def metrics_record(cfg: DictConfig, results: dict[str, Any], euler_rule: str) -> dict[str, Any]:
    """metrics.json: aggregate metrics (defined ones only) + what produced them."""
    metrics = {k: v for k, v in results["metrics"].items() if not (isinstance(v, float) and math.isnan(v))}
    choices = group_choices()
    record: dict[str, Any] = dict(metrics)
    record.update({
        "euler_convention": euler_rule,
        "experiment": cfg.get("experiment_name"),
        "seed": cfg.seed,
        "model": choices.get("model"), "data": choices.get("data"), "loss": choices.get("loss"),
        "mean_pose": {k: v for k, v in results["mean_pose"].items() if not (isinstance(v, float) and math.isnan(v))},
        "config": {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "loss") if k in cfg},
    })
    return record


def format_table(record: dict[str, Any]) -> str:
    """The metric table printed after a run: every registered value metric the record holds, with its unit and
    digits (``metrics.registry``), beside the mean-pose reference; then the number of test samples."""
    mp = record.get("mean_pose", {})
    lines = [f"{'metric':<18}{'unit':<10}{'model':>12}{'mean pose':>12}", "-" * 52]
    for name, spec in METRICS.items():
        if name in record and not spec.is_count:
            lines.append(f"{name:<18}{spec.unit:<10}{format_value(name, record[name]):>12}"
                         f"{format_value(name, mp.get(name)):>12}")
    lines.append(f"{NUM_SAMPLES:<18}{'':<10}{format_value(NUM_SAMPLES, record.get(NUM_SAMPLES, 0)):>12}")
    lines.append(f"Euler rule: {record['euler_convention']}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> float | None:
    out = check_writable(output_dir())
    if cfg.get("malloc"):  # before the data and the net allocate anything large
        tune_malloc(**cfg.malloc)
    L.seed_everything(cfg.seed, workers=True)
    info = run_info(cfg.seed, {
        "experiment": cfg.get("experiment_name"), "choices": group_choices(), "output_dir": str(out),
        "config": OmegaConf.to_container(cfg, resolve=True)})
    fit_from = fit_ckpt_path(cfg, out) if cfg.get("train", True) else None  # ckpt_path; "last" in a requeued job
    if cfg.get("train", True) and fit_from and (out / "run_info.json").is_file():
        # resuming in the run's own directory (ckpt_path=..., a requeued SLURM job): keep how it started, list
        # each resumption
        first = json.loads((out / "run_info.json").read_text())
        resume = {k: info[k] for k in ("started_utc", "command", "git", "host")} | {"ckpt_path": str(fit_from)}
        if requeued():
            resume["slurm_restart_count"] = int(os.environ["SLURM_RESTART_COUNT"])
        info = first | {"resumes": first.get("resumes", []) + [resume]}
    elif not cfg.get("train", True) and (out / "run_info.json").is_file():
        # re-testing a finished run in its own directory (hpe-bench retest): keep how it started, list each re-test
        first = json.loads((out / "run_info.json").read_text())
        retest = {k: info[k] for k in ("started_utc", "command", "git", "host")} | {
            "ckpt_path": cfg.get("ckpt_path"), "test_on": OmegaConf.to_container(cfg.test_on)
            if OmegaConf.is_config(cfg.get("test_on")) else cfg.get("test_on")}
        info = first | {"retests": first.get("retests", []) + [retest]}
    write_json(out / "run_info.json", info)

    WL.finish_leftover(exit_code=1)  # a W&B run left open by a failed earlier job of this multirun
    datamodule = instantiate(cfg.data)
    euler_rule = cfg.get("euler_rule") or datamodule.euler_rule
    module = instantiate(cfg.model, loss=instantiate(cfg.loss) if cfg.get("loss") else None,
                         augment=instantiate(cfg.augment) if cfg.get("augment") else None, euler_rule=euler_rule)
    # trainer=fast on a CPU: trainer.precision=measure -> the precision timed fastest here (hpe_bench/precision.py)
    if settle_precision(cfg, datamodule, module, info):  # logs the choice and ratio, records it in info
        write_json(out / "run_info.json", info)
    trainer = instantiate(cfg.trainer, logger=build_list(keep_wandb_id(cfg.get("logger"), out)) or False,
                          callbacks=[*build_list(cfg.get("callbacks")), RandomState()], default_root_dir=str(out))
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    WL.prepare(trainer, WL.run_tags(group_choices(), cfg.get("seed")))  # W&B tags, val/* summaries (docs/wandb.md)

    # the protocols to test on (test_on=[...], else the data option's own test split): hpe_bench.protocol_test
    targets = PT.test_targets(cfg, datamodule, group_choices().get("data")) if cfg.get("test", True) else []
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=fit_from)  # requeued: last.ckpt
        if 0 < trainer.max_steps and trainer.global_step < trainer.max_steps and trainer.max_epochs in (None, -1):
            # e.g. trainer.max_time (the demo's safety net on a slow CPU): say so, metrics.json records the step
            log.warning("training stopped at step %d of trainer.max_steps=%d (trainer.max_time=%s or a callback)",
                        trainer.global_step, trainer.max_steps, cfg.trainer.get("max_time"))
    if not cfg.get("test", True):
        WL.finish(trainer)
        return None
    test_ckpt = None if cfg.get("train", True) else cfg.get("ckpt_path")
    if not cfg.get("train", True) and test_ckpt is None:
        log.warning("train=false and no ckpt_path: testing an untrained model (set ckpt_path=...)")
    checkpoint = PT.checkpoint_record(trainer, cfg, out, test_ckpt)
    first = None
    for target in targets:
        PT.use_euler_rule(module, target.euler_rule)
        trainer.test(module, datamodule=target.datamodule, ckpt_path=test_ckpt, verbose=False)
        record = metrics_record(cfg, module.test_results, target.euler_rule)
        record["protocol"] = PT.card(target, record.get(NUM_SAMPLES))
        record["checkpoint"] = checkpoint
        budget = next((cb.plan for cb in trainer.callbacks if getattr(cb, "plan", None)), None)
        if budget:  # callbacks.TimeBudget: the run length fitted to the measured step time
            record["time_budget"] = budget
        WL.log_test(trainer, target.name, record, module.test_frame)  # test/<protocol>/<metric>: W&B + CSV
        first = record if first is None else first
        if trainer.is_global_zero:
            metrics_path, predictions_path = PT.output_paths(out, target, cfg.get("test_on") is not None)
            write_parquet(predictions_path, module.test_frame)
            write_json(metrics_path, record)
            log.info("wrote %s and %s", metrics_path, predictions_path)
            print(f"protocol: {target.name}\n{format_table(record)}", flush=True)
    if trainer.is_global_zero:
        print(f"outputs: {out}", flush=True)
    WL.finish(trainer)  # each multirun job its own W&B run
    return first.get("geodesic_deg") if first else None
