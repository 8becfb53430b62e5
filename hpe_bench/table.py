"""Collect run outputs into tables: ``python -m hpe_bench.table [ROOT] [--out FILE] [--paper-dir DIR]`` (``make table``).

Reads every metrics file under ROOT (default ``outputs``): a run's ``metrics.json`` and, for runs tested on
several protocols, ``metrics/<protocol>.json`` (docs/outputs.md); one row per run and protocol.

- The generic table (``--out``): runs that differ only in their seed averaged (mean and std, with the number
  of seeds), every metric, counts as integers.
- The paper tables (``--paper-dir``): every table of ``hpe_bench/results/*.yaml`` with hpe_bench's value
  (mean ± standard error over seeds, n) beside the published one and the difference, as Markdown, LaTeX
  (booktabs) and CSV (naming the run directories behind each cell); see ``hpe_bench.paper_table``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from . import paper_table as PT
from .metrics.registry import METRICS
from .metrics.registry import METRICS, format_value
from .outputs import atomic_path
from .results import ResultsIndexError, load_all, protocol_of

KEY_COLUMNS = ("experiment", "model", "data", "protocol", "loss", "euler_convention", "overrides")
# Overrides that pick what a run is tested on (or where it writes), not what it is: runs that differ only in
# these belong to one configuration (a training run and the re-tests of its checkpoint, or seeds).
_NOT_CONFIG = ("seed=", "paths.", "hydra.", "data=", "train=", "ckpt_path=", "test_on=", "test_roots.", "experiment=")


def metric_keys() -> list[str]:
    """Every aggregate value metric key, in the registry's order (counts: ``_count_columns``). Read at call
    time, so a metric registered after import is a column too."""
    return [k for k, spec in METRICS.items() if not spec.is_count]


def _overrides(run_dir: Path) -> str:
    """Command-line overrides of the run that define its configuration (see ``_NOT_CONFIG``)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    items = [line.strip()[2:] for line in path.read_text().splitlines() if line.strip().startswith("- ")]
    return " ".join(sorted(o for o in items if not o.lstrip("+~").startswith(_NOT_CONFIG)))


def _metrics_files(root: Path):
    """(run_dir, stem, path) of every metrics file: ``<run>/metrics.json`` and ``<run>/metrics/<protocol>.json``."""
    for path in sorted(root.rglob("*.json")):
        if path.name == "metrics.json":
            yield path.parent, "metrics", path
        elif path.parent.name == "metrics":
            yield path.parent.parent, path.stem, path


def collect(root: str | Path) -> pd.DataFrame:
    """One row per (run directory, protocol) under ``root``."""
    rows = []
    for run_dir, stem, path in _metrics_files(Path(root)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {path}: {err}") from err
        if not isinstance(record, dict):
            raise ValueError(f"cannot read {path}: not a JSON object")
        row = {k: record.get(k) for k in KEY_COLUMNS if k not in ("protocol", "overrides")}
        row.update({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k != "seed"})
        row.update(seed=record.get("seed"), protocol=protocol_of(record, stem), overrides=_overrides(run_dir),
                   mean_pose_geodesic_deg=(record.get("mean_pose") or {}).get("geodesic_deg"),
                   run_dir=str(run_dir), metrics_file=str(path))
        rows.append(row)
    return pd.DataFrame(rows)


def _count_columns(df: pd.DataFrame) -> list[str]:
    return [name for name, spec in METRICS.items() if spec.is_count and name in df]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each configuration; ``seeds`` counts the runs averaged. Counts stay
    integers (``"min-max"`` where the seeds of one configuration were scored on different counts)."""
    if runs.empty:
        return runs
    keys = [k for k in KEY_COLUMNS if k in runs]
    runs = runs.copy()
    runs[keys] = runs[keys].fillna("")  # groupby drops NaN keys otherwise
    value_cols = [c for c in [*metric_keys(), "mean_pose_geodesic_deg"] if c in runs and runs[c].notna().any()]
    grouped = runs.groupby(keys, sort=True)
    table = grouped[value_cols].mean()
    std = grouped[value_cols].std().add_suffix("_std")
    table = table.join(std[[c + "_std" for c in ("geodesic_deg", "mae_r_deg") if c in value_cols]])

    def count(values: pd.Series):
        v = values.dropna().astype(int)
        return "" if v.empty else (int(v.iloc[0]) if v.nunique() == 1 else f"{v.min()}-{v.max()}")

    for col in _count_columns(runs):
        table[col] = grouped[col].agg(count)
    table["seeds"] = grouped.size()
    return table.reset_index()


def to_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (no extra dependency); floats with ``digits`` decimals, integers as integers."""
    # a metric column (also its ``_std`` and ``mean_pose_`` forms) takes its digits from the registry
    names = [c.removeprefix("mean_pose_").removesuffix("_std") for c in df.columns]

    def fmt(v, name):
        if isinstance(v, float):
            return "" if v != v else (format_value(name, v) if name in METRICS else f"{v:.{digits}f}")
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v, n) for v, n in zip(row, names)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def generic_table(runs: pd.DataFrame, per_run: bool = False) -> pd.DataFrame:
    if per_run or runs.empty:
        if runs.empty:
            return runs
        cols = [c for c in [*KEY_COLUMNS, "seed", *metric_keys(), *_count_columns(runs), "run_dir"] if c in runs]
        out = runs[cols].dropna(axis=1, how="all").copy()
        for c in _count_columns(out):
            out[c] = out[c].astype("Int64")
        return out
    table = summarise(runs)
    return table.dropna(axis=1, how="all")


def write_paper_tables(runs: pd.DataFrame, out_dir: str | Path | None, papers: list[str] | None = None,
                       tables: list[str] | None = None, protocol_map: dict[str, str] | None = None,
                       show_all: bool = False) -> list[str]:
    """Render every selected paper table; write ``<paper>_<table>.{md,tex,csv}`` under ``out_dir`` (if given).
    Returns the Markdown of the tables that have at least one hpe_bench value (all with ``show_all``)."""
    shown = []
    for name, paper in load_all().items():
        if papers and name not in papers:
            continue
        for key, table in paper.tables.items():
            if tables and key not in tables:
                continue
            results = PT.fill(table, runs, protocol_map)
            md = PT.to_markdown(table, paper.title, results, protocol_map)
            if out_dir is not None:
                base = Path(out_dir) / f"{name}_{key}"
                base.parent.mkdir(parents=True, exist_ok=True)
                for suffix, text in ((".md", md), (".tex", PT.to_latex(table, paper.title, results, protocol_map)),
                                     (".csv", PT.to_frame(table, results).to_csv(index=False))):
                    with atomic_path(base.with_suffix(suffix)) as tmp:
                        tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            if show_all or any(r.n for r in results):
                shown.append(md)
    return shown


def _protocol_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--protocol expects PAPER_PROTOCOL=RUN_PROTOCOL (e.g. arkitface=synthetic), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="outputs", help="directory searched for metrics files")
    parser.add_argument("--out", help="write the generic table here (.md or .csv), atomically")
    parser.add_argument("--runs", action="store_true", help="generic table: one row per run, not per configuration")
    parser.add_argument("--paper-dir", help="write every paper table as <paper>_<table>.md/.tex/.csv here")
    parser.add_argument("--paper", action="append", help="only this paper (opnet, trg); repeatable")
    parser.add_argument("--table", action="append", help="only this table key (e.g. table1); repeatable")
    parser.add_argument("--protocol", action="append", default=[], metavar="PAPER=RUN",
                        help="fill the paper's PAPER protocol columns from runs tested on RUN (e.g. arkitface=synthetic)")
    parser.add_argument("--all", action="store_true", help="print every paper table, also those without runs")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        parser.error(f"no such directory: {args.root}")
    try:
        runs = collect(args.root)
        paper_md = write_paper_tables(runs, args.paper_dir, args.paper, args.table, _protocol_map(args.protocol),
                                      args.all)
    except (ValueError, ResultsIndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    table = generic_table(runs, args.runs)
    if table.empty:
        print(f"no metrics.json found under {args.root}")
    else:
        text = table.to_csv(index=False) if args.out and args.out.endswith(".csv") else to_markdown(table)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(args.out) as tmp:
                tmp.write_text(text + "\n")
    for md in paper_md:
        print("\n" + md)
    if args.paper_dir:
        print(f"\npaper tables (Markdown, LaTeX, CSV): {args.paper_dir}/<paper>_<table>.*")


if __name__ == "__main__":
    main()
