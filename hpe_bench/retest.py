"""Re-test a finished run on more protocols from its checkpoint, without training again, into its own directory:

    hpe-bench retest RUN_DIR PROTOCOL [PROTOCOL ...] [--ckpt swa|last|PATH] [-- OVERRIDE ...]

It runs ``python -m hpe_bench`` with the run's own overrides (``RUN_DIR/.hydra/overrides.yaml``, so the model,
loss and data are the run's) plus ``train=false ckpt_path=<checkpoint> test_on=[...] hydra.run.dir=RUN_DIR``,
leaving the run's ``.hydra/`` as it started (``hydra.output_subdir=null``); ``run_info.json`` keeps its start
and lists each re-test under ``retests``. Each protocol writes ``metrics/<protocol>.json`` and
``predictions/<protocol>.parquet`` (docs/outputs.md). The checkpoint is ``swa.ckpt`` when the run has one (the
weights its own test used), else ``last.ckpt``; metrics files name it (``checkpoint``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from .protocols import ProtocolError, get_protocol

CHECKPOINTS = ("swa.ckpt", "last.ckpt")  # preference order: the weights the run's own test used
# overrides of the run that say what it was tested on or how it ran, not what it is
_DROP = ("train=", "test=", "ckpt_path=", "test_on=", "test_roots", "hydra.", "euler_rule=")


def choose_checkpoint(run_dir: Path, ckpt: str | None) -> Path:
    if ckpt and ckpt not in ("swa", "last"):
        path = Path(ckpt)
    else:
        names = CHECKPOINTS if ckpt is None else (f"{ckpt}.ckpt",)
        path = next((run_dir / "checkpoints" / n for n in names if (run_dir / "checkpoints" / n).is_file()),
                    run_dir / "checkpoints" / names[-1])
    if not path.is_file():
        raise SystemExit(f"Error: no checkpoint {str(path)!r} (a run writes checkpoints/last.ckpt while training)")
    return path


def command(run_dir: Path, protocols: Sequence[str], ckpt: str | None = None,
            extra: Sequence[str] = ()) -> list[str]:
    """The ``python -m hpe_bench`` command line that re-tests ``run_dir`` on ``protocols``."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise SystemExit(f"Error: {str(run_dir)!r} is no hpe_bench run directory (no .hydra/overrides.yaml)")
    for name in protocols:
        try:
            get_protocol(name)
        except ProtocolError as err:
            raise SystemExit(f"Error: {err}") from None
    kept = [str(o) for o in OmegaConf.load(overrides_file) if not str(o).lstrip("+~").startswith(_DROP)]
    path = choose_checkpoint(run_dir, ckpt).resolve()
    return [sys.executable, "-m", "hpe_bench", *kept, "train=false", f"ckpt_path={path}",
            f"test_on=[{','.join(protocols)}]", f"hydra.run.dir={run_dir.resolve()}", "hydra.output_subdir=null",
            *extra]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpe-bench retest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run's directory (outputs/runs/<experiment>/<time>)")
    p.add_argument("protocols", nargs="+", help="protocol names (hpe_bench/protocols/*.yaml)")
    p.add_argument("--root", action="append", default=[], metavar="PROTOCOL=PATH",
                   help="dataset root of a protocol (else its environment variable, e.g. HPE_BIWI_ROOT)")
    p.add_argument("--ckpt", help="swa | last | a checkpoint path (default: swa.ckpt if present, else last.ckpt)")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    args, extra = p.parse_known_args(argv)
    # KEY=VALUE words are Hydra overrides for the re-test (e.g. data.root=...), the others protocol names
    extra = [e for e in extra if e != "--"] + [w for w in args.protocols if "=" in w]
    protocols = [w for w in args.protocols if "=" not in w]
    if not protocols:
        p.error("name at least one protocol")
    for item in args.root:
        name, sep, path = item.partition("=")
        if not sep or name not in protocols:
            p.error(f"--root expects PROTOCOL=PATH for a protocol being tested, got {item!r}")
        extra.append(f"+test_roots.{name}={Path(path).resolve()}")
    cmd = command(args.run_dir, protocols, args.ckpt, extra)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
