"""``python -m hpe_bench.import_checkpoint SRC OUT`` (or ``hpe-bench import-checkpoint SRC OUT``): turn the
authors' released checkpoint ``SRC`` (OpNet ``paper`` branch ``*.ckpt``, TRG-Release ``state_dict.bin``) into the
hpe_bench checkpoint ``OUT``, then test it on any protocol with the preset it prints, e.g.

    python -m hpe_bench.import_checkpoint swa_NetworkWithPointHead_mobilenetv1.ckpt opnet_bl.ckpt
    python -m hpe_bench model=opnet_code data=aflw2000 train=false ckpt_path=opnet_bl.ckpt

The format (and OpNet's backbone) is detected from the keys; ``--format`` forces it. A file that is not a
convertible checkpoint (unreadable or truncated, keys missing, unexpected or misshapen, a BlurPool OpNet) gets
one line naming the file and the keys and exit status 2; ``OUT`` is written atomically, never half.
docs/reproducing.md ("The authors' released checkpoints") lists the commands and the published numbers.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .importers import FORMATS, CheckpointImportError, import_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpe_bench.import_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="the authors' checkpoint file")
    ap.add_argument("out", help="the hpe_bench checkpoint to write (.ckpt)")
    ap.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help="source format (default: detect)")
    args = ap.parse_args(argv)
    try:
        meta = import_checkpoint(args.src, args.out, args.format)
    except CheckpointImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the output location: unwritable directory, full disk
        print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
        return 2
    variant = "".join(f", {k} {v}" for k, v in meta["variant"].items())
    print(f"wrote {args.out} (format {meta['format']}{variant})")
    for key, diff in meta["dropped_buffers"].items():
        if diff["max_abs_diff_to_asset"] > 1e-6:
            print(f"note: the file's {key} differs from hpe_bench's asset by up to {diff['max_abs_diff_to_asset']:.3g} "
                  f"(hpe_bench uses its asset)")
    print(f"test it with: python -m hpe_bench model={meta['model_preset']} data=<protocol> train=false "
          f"ckpt_path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
