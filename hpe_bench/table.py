"""Collect run outputs into a results table: ``python -m hpe_bench.table [ROOT] [--out FILE]`` (``make table``).

Reads every ``metrics.json`` under ROOT (default ``outputs``), one row per run, then averages runs that
differ only in their seed (mean and std, with the number of seeds), so a multirun grid over seeds becomes
one line per configuration.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .outputs import atomic_path

KEY_COLUMNS = ("experiment", "model", "data", "loss", "euler_convention", "overrides")
METRICS = ("geodesic_deg", "mae_r_deg", "yaw_deg", "pitch_deg", "roll_deg", "mae_t_mm", "add_mm", "nme2d",
           "num_samples")


def _overrides(run_dir: Path) -> str:
    """Command-line overrides of the run minus its seed (so seeds of one configuration group together)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    items = [line.strip()[2:] for line in path.read_text().splitlines() if line.strip().startswith("- ")]
    return " ".join(sorted(o for o in items if not o.startswith(("seed=", "paths.", "hydra."))))


def collect(root: str | Path) -> pd.DataFrame:
    """One row per run directory under ``root`` holding a ``metrics.json``."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        row = {k: record.get(k) for k in KEY_COLUMNS + METRICS + ("seed",)}
        row["overrides"] = _overrides(path.parent)
        row["mean_pose_geodesic_deg"] = record.get("mean_pose", {}).get("geodesic_deg")
        row["run_dir"] = str(path.parent)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each configuration; ``seeds`` counts the runs averaged."""
    if runs.empty:
        return runs
    keys = [k for k in KEY_COLUMNS if k in runs]
    runs = runs.copy()
    runs[keys] = runs[keys].fillna("")  # groupby drops NaN keys otherwise
    value_cols = [c for c in METRICS + ("mean_pose_geodesic_deg",) if c in runs and runs[c].notna().any()]
    grouped = runs.groupby(keys, sort=True)
    table = grouped[value_cols].mean()
    std = grouped[value_cols].std().add_suffix("_std")
    table = table.join(std[[c + "_std" for c in ("geodesic_deg", "mae_r_deg") if c in value_cols]])
    table["seeds"] = grouped.size()
    return table.reset_index()


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (no extra dependency)."""
    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="outputs", help="directory searched for metrics.json")
    parser.add_argument("--out", help="write the table here (.md or .csv), atomically")
    parser.add_argument("--runs", action="store_true", help="one row per run instead of per configuration")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        parser.error(f"no such directory: {args.root}")
    runs = collect(args.root)
    table = runs if args.runs else summarise(runs)
    if table.empty:
        print(f"no metrics.json found under {args.root}")
        return
    text = table.to_csv(index=False) if args.out and args.out.endswith(".csv") else to_markdown(table)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
