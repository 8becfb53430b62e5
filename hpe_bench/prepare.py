"""``python -m hpe_bench.prepare data=<name> root=<path> [overrides]``: build the caches of a data config.

Composes conf/config.yaml like ``python -m hpe_bench`` (same overrides), sets ``data.root`` from ``root=``,
builds the datamodule and prepares every configured split (train/val/test; mixture members each), with
progress bars. Prints records, skipped records and cache path per prepared dataset. A missing root or a
wrong layout prints the loader's message (the path and the expected layout) and exits with status 2; a bad
record with ``on_error=raise`` exits with status 3.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from .__main__ import CONF_DIR
from .data.raw import LayoutError, RecordError

SPLITS = ("train", "val", "test")


def _leaves(name: str, ds: Any) -> Iterator[tuple[str, Any]]:
    """``(label, dataset)`` for every preparable dataset, descending into mixtures / concatenations."""
    members = getattr(ds, "named", None) or getattr(ds, "datasets", None)
    if isinstance(members, dict):
        for key, sub in members.items():
            yield from _leaves(f"{name}.{key}", sub)
    elif hasattr(ds, "prepare"):
        yield name, ds


def compose_config(overrides: Sequence[str]):
    """The composed config with ``root=X`` turned into ``data.root=X``."""
    fixed = [f"++data.root={o.split('=', 1)[1]}" if o.startswith("root=") else o for o in overrides]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=fixed)


def prepare(overrides: Sequence[str], splits: Sequence[str] = SPLITS) -> Iterator[dict[str, Any]]:
    """Prepare every configured split, yielding one report per prepared dataset as it completes."""
    cfg = compose_config(overrides)
    dm = instantiate(cfg.data)
    for split in splits:
        ds = dm.datasets.get(split)
        if ds is None:
            continue
        for label, leaf in _leaves(f"data.{split}", ds):
            leaf.prepare()
            rep = leaf.report() if hasattr(leaf, "report") else {"records": len(leaf), "path": getattr(leaf, "path", None)}
            yield {"config": label, **rep}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpe_bench.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=aflw2000 root=/data/AFLW2000")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to prepare")
    args = ap.parse_args(argv)
    count = 0
    try:
        for r in prepare(args.overrides, [s for s in args.splits.split(",") if s]):
            skipped = f", {r['skipped']} skipped of {r.get('source_records', '?')}" if r.get("skipped") else ""
            print(f"{r['config']}: {r['records']} records{skipped} -> {r.get('path') or 'raw (no cache)'}", flush=True)
            count += 1
    except LayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecordError as exc:
        print(f"error: {exc}\n(set on_error=skip on the split to leave bad records out)", file=sys.stderr)
        return 3
    if not count:
        print("nothing to prepare: no configured split has a cache", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
