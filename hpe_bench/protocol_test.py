"""Testing a run on its protocols (docs/outputs.md, docs/running.md): which test sets, which checkpoint, which files.

- ``test_targets``: without ``test_on`` the run's own test split (its protocol card from ``hpe_bench.protocols``
  when the data option is registered); with ``test_on=[a,b]`` each named protocol, its data composed from
  ``conf/data/<protocol.data>`` plus the protocol's overrides (the run's own data config where it is the
  same option), each scored under its own Euler rule (``euler_rule=...`` on the command line overrides all).
- ``checkpoint_record``: which weights the test numbers come from - ``last`` (the final weights), ``swa`` (the
  SWA average) or ``val/<metric> min|max`` (a validation-selected checkpoint); a test-selected checkpoint is
  refused.
- ``output_paths``: ``metrics.json`` + ``predictions.parquet`` without ``test_on``, else
  ``metrics/<protocol>.json`` + ``predictions/<protocol>.parquet`` per protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .preflight import UserError
from .protocols import Protocol, ProtocolError, get_protocol, protocol_for_data

__all__ = ["TestTarget", "test_targets", "checkpoint_record", "output_paths", "protocol_data_config", "card",
           "use_euler_rule"]


@dataclass
class TestTarget:
    name: str                      # protocol name (the data option's name when it is not registered)
    protocol: Optional[Protocol]
    datamodule: Any
    euler_rule: str


def _test_on(cfg: DictConfig) -> list[str]:
    test_on = cfg.get("test_on")
    if test_on is None:
        return []
    names = [test_on] if isinstance(test_on, str) else list(test_on)
    if len(set(names)) != len(names):
        raise UserError(f"test_on={names}: a protocol is listed twice")
    return [str(n) for n in names]


def _choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig
    try:
        value = HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # not under @hydra.main
        return None
    return None if value in (None, "null", "None") else str(value)


def protocol_data_config(cfg: DictConfig, proto: Protocol) -> DictConfig:
    """The ``data`` config of ``proto``: ``data=<proto.data>`` and its overrides, composed with the run's
    ``debug`` and ``paths`` choices (so a smoke run tests a tiny version of each protocol), its root from
    ``test_roots.<protocol>`` where given (else the option's environment variable); roots checked here."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .__main__ import CONF_DIR
    overrides = [f"data={proto.data}", *proto.overrides, "train=false"]  # train=false: check the test roots only
    debug = _choice("debug")
    if debug:
        overrides.append(f"debug={debug}")
    overrides += [f"paths.{k}={v}" for k, v in OmegaConf.to_container(cfg.paths, resolve=True).items()]
    root = (cfg.get("test_roots") or {}).get(proto.name)
    if root is not None:  # test_roots.<protocol>=PATH: that protocol's dataset root (else its environment variable)
        overrides.append(f"data.root={root}")
    try:
        if GlobalHydra.instance().is_initialized():  # inside the Hydra app: its config search path
            composed = compose("config", overrides=overrides)
        else:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                composed = compose("config", overrides=overrides)
    except Exception as err:  # Hydra's errors name the missing option
        raise UserError(f"test_on protocol {proto.name!r} (hpe_bench/protocols/{proto.name}.yaml): "
                        f"cannot compose its data option: {err}") from err
    from .preflight import check_data_roots
    check_data_roots(composed)  # a missing root of a test_on protocol stops the run before training, named
    return composed.data


def test_targets(cfg: DictConfig, datamodule: Any, data_choice: str | None) -> list[TestTarget]:
    """The protocols the run tests on, in order (module docstring); built before training, so that a bad
    ``test_on`` stops the run before it trains."""
    forced = cfg.get("euler_rule")
    names = _test_on(cfg)
    if not names:
        proto = protocol_for_data(data_choice)
        rule = forced or datamodule.euler_rule
        return [TestTarget(proto.name if proto else str(data_choice or datamodule.name), proto, datamodule, rule)]
    targets = []
    for name in names:
        try:
            proto = get_protocol(name)
        except ProtocolError as err:
            raise UserError(f"test_on: {err}") from None
        own = proto.data == data_choice and not proto.overrides
        dm = datamodule if own else instantiate(protocol_data_config(cfg, proto))
        targets.append(TestTarget(name, proto, dm, forced or proto.euler_rule))
    return targets


def output_paths(out: Path, target: TestTarget, multi: bool) -> tuple[Path, Path]:
    """(metrics file, predictions file) of one tested protocol."""
    if not multi:
        return out / "metrics.json", out / "predictions.parquet"
    (out / "metrics").mkdir(exist_ok=True)
    (out / "predictions").mkdir(exist_ok=True)
    return out / "metrics" / f"{target.name}.json", out / "predictions" / f"{target.name}.parquet"


def _given_checkpoint(path: Path) -> dict[str, Any]:
    """Selection of a checkpoint file the user passed (``train=false ckpt_path=...``)."""
    import torch
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    step = int(ckpt.get("global_step", 0))
    if path.name == "swa.ckpt":
        return {"selection": "swa", "path": str(path), "step": step}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not (str(key).startswith("ModelCheckpoint") and isinstance(state, dict)):
            continue
        best, monitor = state.get("best_model_path"), state.get("monitor")
        if monitor and best and Path(best).name == path.name and path.name != "last.ckpt":
            if str(monitor).startswith("test"):
                raise UserError(f"ckpt_path={path}: selected on the test metric {monitor!r}; test numbers must come "
                                f"from the last or a validation-selected checkpoint")
            mode = "max" if "'mode': 'max'" in str(key) else "min"
            return {"selection": f"{monitor} {mode}", "path": str(path), "step": step}
    selection = "last" if path.name == "last.ckpt" else "given"
    return {"selection": selection, "path": str(path), "step": step}


def checkpoint_record(trainer: Any, cfg: DictConfig, out: Path, test_ckpt: Any) -> dict[str, Any]:
    """``checkpoint`` of metrics.json: which weights the test numbers come from (module docstring)."""
    if test_ckpt:
        return _given_checkpoint(Path(str(test_ckpt)))
    if not cfg.get("train", True):
        return {"selection": "untrained", "path": None, "step": 0}
    from .swa import SampleSWA
    swa = next((cb for cb in trainer.callbacks if isinstance(cb, SampleSWA)), None)
    ckpt_dir = out / "checkpoints"
    if swa is not None and swa.averaged is not None:
        path = ckpt_dir / (swa.save_name or "swa.ckpt")
        return {"selection": "swa", "path": str(path) if path.is_file() else None, "step": int(trainer.global_step)}
    path = ckpt_dir / "last.ckpt"
    return {"selection": "last", "path": str(path) if path.is_file() else None, "step": int(trainer.global_step)}


def use_euler_rule(module: Any, rule: str) -> None:
    """Score the next test of ``module`` under ``rule`` (metrics rebuilt only when the rule changes)."""
    from .geometry import check_rule
    rule = check_rule(rule)
    if rule != module.euler_rule:
        module.euler_rule = rule
        module._build_metrics()


def card(target: TestTarget, num_samples: Any) -> dict[str, Any]:
    """The ``protocol`` card of a metrics file (``hpe_bench.protocols``), or an unregistered one's name."""
    n = int(num_samples) if num_samples is not None else None
    if target.protocol is None:
        return {"name": target.name, "registered": False, "euler_rule": target.euler_rule}
    return target.protocol.card(n)
