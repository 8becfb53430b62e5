"""Checks of a composed run config that need no work: they run before Hydra creates the run directory.

``preflight(cfg, run_dir)`` checks that the run directory can be created, that every config value resolves,
that ``euler_rule`` is known, that each dataset root the run will read exists (naming the environment
variable that sets it) and that ``ckpt_path`` is a Lightning checkpoint (``ckpt_path=last`` ->
``<run_dir>/checkpoints/last.ckpt``). It raises ``UserError``: a mistake in the command line or the
environment, printed as its message alone (``HYDRA_FULL_ERROR=1`` shows the traceback).
``hpe_bench.jobs`` calls it from a Hydra callback before the run directory exists (docs/running.md).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["UserError", "preflight", "check_config", "check_data_roots", "missing_data_roots", "resolve_ckpt_path",
           "checkpoint_step", "as_user_error", "LAST"]

LAST = "last"  # ckpt_path=last: the run directory's checkpoints/last.ckpt
_ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
_REF = re.compile(r"^\$\{(\.*)([A-Za-z_][\w.]*)\}$")


class UserError(CompactHydraException):
    """A mistake in the command line, the config or the environment; Hydra prints the message only."""


def as_user_error(err: BaseException) -> Optional[UserError]:
    """``err`` as a ``UserError`` when it is one the user fixes (a missing dataset, an unwritable output
    directory, a config value that does not resolve or construct), else None (a bug: keep its traceback)."""
    from hydra.errors import InstantiationException

    from .data.raw import LayoutError, RecordError
    from .outputs import OutputError
    if isinstance(err, UserError):
        return err
    if isinstance(err, (LayoutError, RecordError, OutputError, OmegaConfBaseException, InstantiationException)):
        return UserError(str(err))
    return None


# -- config values ---------------------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Resolve every value outside ``hydra``; ``UserError`` naming the key that does not resolve."""
    for key in cfg:
        if key == "hydra":
            continue
        try:
            node = cfg[key]
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise UserError(f"config error: {err}") from err


# -- dataset roots ---------------------------------------------------------------------------------------
def _sources(node: Any, key: str) -> Iterator[tuple[str, DictConfig]]:
    """(key, node) of every constructed node below ``node`` that takes a ``root`` (a dataset source)."""
    if isinstance(node, DictConfig):
        if "_target_" in node and "root" in node:
            yield key, node
        for k in node:
            yield from _sources(node._get_node(k), f"{key}.{k}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _sources(node._get_node(i), f"{key}.{i}")


def _raw(cfg: DictConfig, key: str) -> Any:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_resolution_failure=False) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return None
    return OmegaConf.to_container(parent, resolve=False)[leaf]


def env_source(cfg: DictConfig, key: str, _depth: int = 0) -> Optional[tuple[str, str]]:
    """``(config key, environment variable)`` the value at ``key`` is read from through ``${oc.env:...}``,
    following plain interpolations such as ``${data.root}``; None when it comes from no variable."""
    raw = _raw(cfg, key)
    if not isinstance(raw, str) or _depth > 16:
        return None
    match = _ENV.search(raw)
    if match:
        return key, match.group(1)
    match = _REF.match(raw)
    if not match:
        return None
    dots, rest = match.groups()
    # OmegaConf relative interpolation: one dot = a sibling of the key, each further dot one level up
    target = ".".join(key.split(".")[:-len(dots)] + [rest]) if dots else rest
    return env_source(cfg, target, _depth + 1)


def _layout(target: str) -> str:
    try:
        from hydra.utils import get_class
        return getattr(get_class(target), "layout", "") or ""
    except Exception:  # noqa: BLE001 - the layout only decorates the message
        return ""


def check_data_roots(cfg: DictConfig) -> None:
    """Every dataset source the run reads (``data.train``/``data.val`` when training, ``data.test`` when
    testing) has a root that exists; else ``UserError`` naming the key, the environment variable and the layout."""
    for problem in missing_data_roots(cfg):
        raise UserError(problem)


def missing_data_roots(cfg: DictConfig) -> list[str]:
    """``check_data_roots``'s message for every missing root, in config order (the grid names them all at once)."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig):
        return []
    problems = []
    skip = set()
    if not cfg.get("train", True):
        skip |= {"train", "val"}
    if not cfg.get("test", True):
        skip.add("test")
    for stage in data:
        if stage in skip:
            continue
        for key, node in _sources(data._get_node(stage), f"data.{stage}"):
            root = node.get("root")
            if root is not None and str(root) not in ("", "???", "None") and Path(str(root)).expanduser().exists():
                continue
            source = env_source(cfg, f"{key}.root")
            layout = _layout(str(node.get("_target_")))
            where = f"{node.get('_target_')} at {key}"
            if source is None:
                fix = f"pass {key}.root=<dir>"
            else:
                fix = f"set the environment variable {source[1]} (or pass {source[0]}=<dir>)"
            if root is None or str(root) in ("", "???", "None"):
                msg = f"no dataset root for {where}: {fix}"
            else:
                msg = f"dataset root {str(root)!r} of {where} does not exist: {fix}"
            problems.append(msg + (f"\nexpected layout:\n{layout}" if layout else ""))
    return problems


# -- checkpoint ------------------------------------------------------------------------------------------
def resolve_ckpt_path(ckpt_path: Any, run_dir: str | Path) -> Optional[Path]:
    """The checkpoint file ``ckpt_path`` names (``last`` -> ``<run_dir>/checkpoints/last.ckpt``), None if unset.

    ``UserError`` naming it if the file does not exist or is not a Lightning checkpoint."""
    if ckpt_path is None or str(ckpt_path) in ("", "None", "null"):
        return None
    if str(ckpt_path) == LAST:
        path = Path(run_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise UserError(f"ckpt_path=last: no checkpoint {str(path)!r} in the run directory; resume with "
                            f"hydra.run.dir=<the run's directory> ckpt_path=last (docs/running.md)")
    else:
        path = Path(str(ckpt_path)).expanduser()
        if not path.is_file():
            raise UserError(f"ckpt_path={ckpt_path}: no such file")
    checkpoint_step(path)
    return path


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` a Lightning checkpoint was saved at (0 if it has none, e.g. imported weights);
    ``UserError`` naming the file if it is no checkpoint."""
    import torch
    try:
        # mmap: only the pickled index is read, not the weights. Not weights_only: a Lightning checkpoint holds
        # loop and callback states, and it is the user's own file (Lightning loads it the same way).
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"ckpt_path={path}: not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict)")
    return int(ckpt.get("global_step", 0))


def check_euler_rule(cfg: DictConfig) -> None:
    rule = cfg.get("euler_rule")
    if rule is None:
        return
    from .geometry import check_rule  # the rules are the geometry module's
    try:
        check_rule(str(rule))
    except ValueError as err:
        raise UserError(f"euler_rule={rule}: {err}") from err


def check_run_dir(run_dir: str | Path, key: str = "hydra.run.dir") -> None:
    """The run directory exists as a directory or can be created (its nearest existing ancestor is a writable
    directory); else ``UserError`` naming it and ``key``. Creating it is Hydra's job, after these checks."""
    path = Path(os.path.abspath(run_dir))
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"output directory {str(path)!r} (config key {key}) cannot be created: "
                        f"{str(ancestor)!r} is not a writable directory")


def check_test_on(cfg: DictConfig) -> None:
    """Every protocol of ``test_on`` is registered (``hpe_bench/protocols``) and has its dataset root (its data
    option composed as the run will: ``protocol_test.protocol_data_config``)."""
    test_on = cfg.get("test_on")
    if test_on is None:
        return
    from .protocols import registry
    names = [str(test_on)] if isinstance(test_on, str) else [str(n) for n in test_on]
    unknown = [n for n in names if n not in registry()]
    if unknown:
        raise UserError(f"test_on: unknown protocol(s) {unknown}; registered: {', '.join(registry())} "
                        f"(hpe_bench/protocols/*.yaml)")
    from .protocol_test import protocol_data_config
    for name in names:
        protocol_data_config(cfg, registry()[name])  # raises UserError naming the root's key and variable


def preflight(cfg: DictConfig, run_dir: str | Path) -> Optional[Path]:
    """All checks above; returns the checkpoint file ``ckpt_path`` names (None if unset)."""
    check_run_dir(run_dir)
    check_config(cfg)
    check_euler_rule(cfg)
    check_test_on(cfg)
    check_data_roots(cfg)
    return resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
