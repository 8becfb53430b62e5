"""The papers' figures from run outputs (matplotlib, PNG + PDF): ``python -m hpe_bench.figures CMD ...`` / ``make figures``.

- ``worst RUN``: OpNet Fig. 1, the test samples with the largest rotation error, predicted (thick) and true
  (thin) head axes, predicted (blue) and true (green) landmarks, the face box (needs the run's checkpoint and
  test data).
- ``noise RUN...``: OpNet Fig. 2, spread and geodesic error of the mean prediction vs the sigma of Gaussian
  noise added to the input image (uint8 units), one line per checkpoint.
- ``uncertainty RUN...``: OpNet Fig. 3, predicted rotation uncertainty (``sigma_rot_frobenius``) vs geodesic
  error, from ``predictions.parquet``.
- ``translation DATA[:SPLIT]...``: TRG Fig. 3, distributions of ground-truth translation and correction
  parameters (s, dx, dy of paper Eq. 2) per dataset and split.
- ``yaw-bins RUN...``: geodesic and per-axis error vs |ground-truth yaw| bins, any run.
- ``all [ROOT]``: every figure the runs under ROOT allow (``make figures``); one failing figure never stops
  the others.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .checkpoint import checkpoint_of, load_model_and_test_set, noise, worst
from .common import SIGMAS, read_run, save
from .data import _splits, datasets_from_specs, translation_distributions
from .predictions import uncertainty, yaw_bin_table, yaw_bins

__all__ = ["worst", "noise", "uncertainty", "yaw_bins", "yaw_bin_table", "translation_distributions",
           "datasets_from_specs", "read_run", "save", "checkpoint_of", "load_model_and_test_set", "make_all", "main"]


# -- command line ------------------------------------------------------------------------------------------
def run_dirs_under(root: str | Path) -> list[Path]:
    """Run directories (with predictions.parquet) under ``root``, in path order."""
    return sorted(p.parent for p in Path(root).rglob("predictions.parquet"))


def protocol_predictions_under(root: str | Path) -> list[Path]:
    """``<run>/predictions/<protocol>.parquet`` files under ``root`` (runs tested on several protocols)."""
    return sorted(p for p in Path(root).rglob("*.parquet") if p.parent.name == "predictions")


def _tag(run_dir: Path, root: Path) -> str:
    try:
        rel = run_dir.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(run_dir.name)
    return "_".join(rel.parts) or run_dir.name


def make_all(root: str | Path, out: Path, noise_runs: int = 4, noise_limit: int = 32, draws: int = 4,
             sigmas: Sequence[float] = (0, 8, 32, 64), worst_n: int = 8, translation_limit: int = 512) -> dict[str, str]:
    """Every figure the runs under ``root`` allow; returns {figure: "ok" | reason skipped}."""
    root = Path(root)
    runs = run_dirs_under(root)
    status: dict[str, str] = {}

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
            status[key] = "ok"
        except Exception as err:  # noqa: BLE001 - one missing input must not stop the other figures
            status[key] = f"skipped: {type(err).__name__}: {err}"
            print(f"{key}: {status[key]}", file=sys.stderr)

    if not runs:
        print(f"no run with predictions.parquet under {root}", file=sys.stderr)
    for run in runs:
        tag = _tag(run, root)
        attempt(f"yaw-bins {tag}", lambda: yaw_bins([run], out / tag, name="yaw_bins"))
        if (run / "checkpoints").is_dir():
            attempt(f"worst {tag}", lambda: worst(run, out / tag, worst_n, name="worst_predictions"))
    for file in protocol_predictions_under(root):
        tag = _tag(file.parent.parent, root)
        attempt(f"yaw-bins {tag} {file.stem}", lambda: yaw_bins([file], out / tag, name=f"yaw_bins_{file.stem}"))
    with_sigma = [r for r in runs if "sigma_rot_frobenius" in pd.read_parquet(r / "predictions.parquet").columns]
    if with_sigma:
        attempt("uncertainty", lambda: uncertainty(with_sigma, out))
    with_ckpt = [r for r in runs if (r / "checkpoints").is_dir()][-noise_runs:]
    if with_ckpt:
        attempt("noise", lambda: noise(with_ckpt, out, sigmas, draws, noise_limit))
    if runs:  # each data config the runs used (their own sizes), train and test split
        def sources():
            from hydra.utils import instantiate
            from omegaconf import OmegaConf

            configs = {}
            for r in runs:
                if (r / ".hydra" / "config.yaml").is_file():
                    data = OmegaConf.load(r / ".hydra" / "config.yaml").data
                    configs.setdefault(str(data.get("name")), data)
            return [src for name, data in configs.items()
                    for src in _splits(instantiate(data), name, [s for s in ("train", "test") if data.get(s)])]
        attempt("translation", lambda: translation_distributions(sources(), out, translation_limit))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpe_bench.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/figures", help="output folder (default outputs/figures)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("worst", help="OpNet Fig. 1: worst predictions of a run")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=8)
    p = sub.add_parser("noise", help="OpNet Fig. 2: spread and error vs input noise, per checkpoint")
    p.add_argument("runs", nargs="+")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--limit", type=int, default=64, help="test images used")
    p = sub.add_parser("uncertainty", help="OpNet Fig. 3: rotation uncertainty vs error")
    p.add_argument("runs", nargs="+")
    p = sub.add_parser("translation", help="TRG Fig. 3: GT translation and correction parameters per dataset")
    p.add_argument("data", nargs="+", help="conf/data option[:split], e.g. synthetic:train synthetic:test biwi_6dof")
    p.add_argument("--limit", type=int, default=2000, help="samples per dataset")
    p.add_argument("--box-scale", type=float, default=1.2)
    p.add_argument("--override", action="append", default=[], help="Hydra override, e.g. debug=default")
    p = sub.add_parser("yaw-bins", help="error vs |yaw| bins, one line per run")
    p.add_argument("runs", nargs="+")
    p.add_argument("--width", type=float, default=15.0)
    p = sub.add_parser("all", help="every figure the runs under ROOT allow (make figures)")
    p.add_argument("root", nargs="?", default="outputs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.cmd == "worst":
            worst(args.run, out, args.n)
        elif args.cmd == "noise":
            noise(args.runs, out, args.sigmas, args.draws, args.limit)
        elif args.cmd == "uncertainty":
            uncertainty(args.runs, out)
        elif args.cmd == "translation":
            translation_distributions(datasets_from_specs(args.data, args.override), out, args.limit, args.box_scale)
        elif args.cmd == "yaw-bins":
            yaw_bins(args.runs, out, args.width)
        else:
            status = make_all(args.root, out)
            return 0 if not status or any(v == "ok" for v in status.values()) else 1
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


