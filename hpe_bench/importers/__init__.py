"""Importers for the authors' released checkpoints: their state_dict -> an hpe_bench Lightning checkpoint.

One module per source format (``opnet``: neuralnet-tracker-traincode ``paper`` branch; ``trg``: TRG-Release),
each with ``detect(keys)``, ``build_net(variant)`` and ``convert(state, variant) -> (net_state, report)``. This
module holds what they share: reading the file (bare state_dict or a wrapper, CUDA tensors, DataParallel
``module.`` prefixes), the key/shape check that names every missing, unexpected or misshapen key, and writing
the checkpoint that ``python -m hpe_bench ... train=false ckpt_path=...`` loads (atomically).

The layout and convention differences each importer undoes are listed in
``shared/reference/checkpoints/README.md``; the input conventions the imported weights expect are the
``model=*_code`` presets (docs/reproducing.md, "The authors' released checkpoints").
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..outputs import atomic_path

FORMATS = ("opnet", "trg")
MAX_LISTED = 12  # keys named in an error message before "... and N more"


class CheckpointImportError(ValueError):
    """The source file is not a checkpoint this importer can convert; the message says why (file, keys)."""


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensor dict inside a loaded object: a bare state_dict, or one under ``state_dict`` / ``model`` /
    ``net``; a ``module.`` prefix on every key (DataParallel) is removed. Raises naming ``source``."""
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        raise CheckpointImportError(f"{source} is already a Lightning (hpe_bench) checkpoint, not an authors' file: "
                                    f"pass it as ckpt_path= directly")
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointImportError(f"{source} holds no state_dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointImportError(f"{source}: entries that are not named tensors: {_listing(map(str, bad))}")
    state = dict(obj)
    while all(k.startswith("module.") for k in state):  # DataParallel (possibly nested)
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read an authors' checkpoint file onto the CPU (their files may hold CUDA tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle with code, not a torch file: all "unreadable"
        raise CheckpointImportError(f"{path} is not a readable torch checkpoint "
                                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return unwrap_state_dict(obj, str(path))


def check_layout(state: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], source: str,
                 what: str) -> None:
    """Raise ``CheckpointImportError`` naming every missing, unexpected and misshapen key of ``state``
    against ``expected`` (key -> shape) of the ``what`` layout."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})" for k in expected
                 if k in state and tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if misshapen:
        problems.append(f"{len(misshapen)} misshapen key(s): {_listing(misshapen)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if problems:
        raise CheckpointImportError(f"{source} does not match the {what} layout: " + "; ".join(problems))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lightning_checkpoint(net_state: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The dict ``HeadPoseModule`` restores for ``train=false ckpt_path=...``: the net's weights under ``net.``,
    an empty mean-pose reference (no training labels were seen here, so no mean pose is reported) and the
    import record under ``hpe_bench_import``."""
    import lightning

    state = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net_state.items()}
    state.update(mean_R_sum=torch.zeros(3, 3, dtype=torch.float64), mean_t_sum=torch.zeros(3, dtype=torch.float64),
                 mean_counts=torch.zeros(2, dtype=torch.float64))
    return {"state_dict": state, "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0,
            "hpe_bench_import": dict(meta)}


def importer(fmt: str):
    """The importer module of format ``fmt`` (``FORMATS``)."""
    if fmt == "opnet":
        from . import opnet as mod
    elif fmt == "trg":
        from . import trg as mod
    else:
        raise CheckpointImportError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS} or 'auto'")
    return mod


def detect_format(state: Mapping[str, Tensor], source: str) -> str:
    for fmt in FORMATS:
        if importer(fmt).detect(state.keys()):
            return fmt
    raise CheckpointImportError(f"{source}: not an OpNet (keys 'convnet.*', 'quatnet.*', ...) or TRG (keys "
                                f"'feature_extractor.*' and 'regressor.*') checkpoint; first keys: "
                                f"{', '.join(list(state)[:5])}")


def import_checkpoint(src: str | Path, out: str | Path, fmt: str = "auto") -> dict[str, Any]:
    """Convert the authors' checkpoint ``src`` into the hpe_bench checkpoint ``out`` (written atomically:
    nothing is left at ``out`` if anything fails). Returns the import record (also stored in the file)."""
    src, out = Path(src), Path(out)
    state = load_state_dict_file(src)
    fmt = detect_format(state, str(src)) if fmt == "auto" else fmt
    mod = importer(fmt)
    net_state, report = mod.convert(state, str(src))
    net = mod.build_net(report["variant"])
    try:
        net.load_state_dict(net_state, strict=True)  # the converted weights fit the network exactly
    except RuntimeError as err:
        raise CheckpointImportError(f"{src}: converted weights do not fit hpe_bench's network: {err}") from err
    meta = {"format": fmt, "source": str(src), "source_sha256": file_sha256(src), **report}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(lightning_checkpoint(net_state, meta), tmp)
    return meta
