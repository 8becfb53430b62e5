"""Paper tables from run outputs: hpe_bench's numbers beside the published ones (``make table``).

For each table of the results index (``hpe_bench.results``), every row with a preset gets hpe_bench's value
per column: the mean over the runs of that preset (``experiment`` in metrics.json = the preset's
``experiment_name``) tested on the column's protocol, with its standard error over seeds (sample std / sqrt(n))
and n, and the difference to the published value. Rows without runs stay in the table as gaps; peer rows
show the published numbers only. Renderers: Markdown (README), LaTeX (booktabs) and a long CSV that names
the run directories behind every cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .metrics.registry import METRICS
from .results import Row, Table

PROTOCOL_NAMES = {"aflw2000": "AFLW2000-3D", "arkitface": "ARKitFace", "biwi_6dof": "BIWI", "biwi": "BIWI",
                  "synthetic": "synthetic"}
GAP = "—"
PER_AXIS = ("yaw_deg", "pitch_deg", "roll_deg", "mae_r_deg")  # the metrics that depend on the Euler rule
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def protocol_rule(protocol: str) -> str | None:
    """The Euler rule a protocol reports per-axis errors under: its registry entry's (``hpe_bench/protocols``),
    else ``euler_rule`` of conf/data/<protocol>.yaml."""
    from .protocols import registry
    if protocol in registry():
        return registry()[protocol].euler_rule
    path = CONF_DIR / "data" / f"{protocol}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf
    return OmegaConf.load(path).get("euler_rule")


def metric_digits(metric: str) -> int:
    spec = METRICS.get(metric)
    return spec.digits if spec is not None else 2


@dataclass
class Cell:
    protocol: str          # the column's protocol
    source_protocol: str   # the protocol the runs were tested on (differs under --protocol A=B)
    metric: str
    published: float | None
    mean: float | None = None
    se: float | None = None
    n: int = 0
    run_dirs: list[str] = field(default_factory=list)

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.published is None else self.mean - self.published


@dataclass
class RowResult:
    row: Row
    cells: list[Cell]
    config: str = ""       # the overrides of the configuration whose runs fill the row
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return max((c.n for c in self.cells), default=0)


def _choose_config(runs: pd.DataFrame, preset: str) -> tuple[pd.DataFrame, str, list[str]]:
    """The runs of ``preset``; when several configurations (override sets) ran it, the one with most runs."""
    mine = runs[runs["experiment"] == preset] if len(runs) else runs
    if mine.empty:
        return mine, "", []
    sizes = mine.groupby("overrides")["run_dir"].nunique().sort_values(ascending=False, kind="stable")
    chosen = str(sizes.index[0])
    warnings = []
    if len(sizes) > 1:
        others = ", ".join(f"'{o}' ({k} runs)" for o, k in sizes.iloc[1:].items())
        warnings.append(f"{preset}: runs with other overrides ignored: {others}; using '{chosen}' ({sizes.iloc[0]} runs)")
    return mine[mine["overrides"] == chosen], chosen, warnings


def fill(table: Table, runs: pd.DataFrame, protocol_map: dict[str, str] | None = None) -> list[RowResult]:
    """hpe_bench's cells for every row of ``table`` from ``runs`` (``table.collect``: one row per run and
    protocol, with ``experiment``, ``protocol``, ``overrides``, ``run_dir`` and metric columns)."""
    protocol_map = protocol_map or {}
    out = []
    for row in table.rows:
        picked, config, warnings = (_choose_config(runs, row.preset) if row.preset else (pd.DataFrame(), "", []))
        cells = []
        for i, col in enumerate(table.columns):
            source = protocol_map.get(col.protocol, col.protocol)
            cell = Cell(col.protocol, source, col.metric, None if row.values is None else row.values[i])
            if not picked.empty and col.metric in picked:
                sel = picked[(picked["protocol"] == source) & picked[col.metric].notna()]
                seeded = sel["seed"].notna() if "seed" in sel else pd.Series(False, index=sel.index)
                dup = seeded & sel.duplicated(subset=["seed"], keep="first") if "seed" in sel else seeded
                if dup.any():  # e.g. a re-test directory and metrics/<protocol>.json of one run: count a seed once
                    warnings.append(f"{row.preset}: several {source} results for seed(s) "
                                    f"{sorted(set(sel.loc[dup, 'seed']))}; the first (by path) is used")
                    sel = sel[~dup]
                values = sel[col.metric].astype(float)
                cell.n = int(len(values))
                if cell.n:
                    cell.mean = float(values.mean())
                    cell.se = float(values.std(ddof=1) / math.sqrt(cell.n)) if cell.n > 1 else None
                    cell.run_dirs = sorted(sel["run_dir"].astype(str))
                    rules = set(sel.get("euler_convention", pd.Series(dtype=str)).dropna())
                    paper_rule = protocol_rule(col.protocol)
                    if col.metric in PER_AXIS and paper_rule and rules - {paper_rule}:
                        warnings.append(f"{row.preset}: per-axis errors on {source} scored with the "
                                        f"{'/'.join(sorted(rules))} Euler rule; the paper's {col.protocol} uses "
                                        f"{paper_rule} (re-score with hpe-bench score --run ... --report-rule)")
            cells.append(cell)
        warnings = list(dict.fromkeys(warnings))
        out.append(RowResult(row, cells, config, warnings))
    return out


# -- rendering -------------------------------------------------------------------------------------------
def _num(v: float | None, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _published(row: Row, i: int, digits: int) -> str:
    """As the paper prints it: its own spelling if transcribed, else the table's decimals."""
    if row.values is None:
        return "?"
    return row.printed.get(i) or _num(row.values[i], digits)


def _ours(cell: Cell, row_n: int, digits: int, pm: str) -> str:
    if cell.mean is None:
        return GAP
    text = _num(cell.mean, digits) + (f" {pm} {_num(cell.se, digits)}" if cell.se is not None else "")
    return text + (f" (n={cell.n})" if cell.n != row_n else "")


def _labels(table: Table) -> list[str]:
    multi = len(table.protocols) > 1
    return [f"{PROTOCOL_NAMES.get(c.protocol, c.protocol)} {c.label}" if multi else c.label for c in table.columns]


def _lines(table: Table, results: list[RowResult], pm: str, delta: str) -> list[tuple[str, str, list[str]]]:
    """(method, source, cells) lines shared by the Markdown and LaTeX renderers."""
    digits = [metric_digits(c.metric) for c in table.columns]
    lines = []
    for res in results:
        row = res.row
        lines.append((row.name, "published" + ("" if row.runnable or row.peer else " (not runnable)"),
                      [_published(row, i, table.digits) for i in range(len(digits))]))
        if not row.runnable:
            continue
        if res.n == 0:
            lines.append(("", f"hpe_bench `{row.preset}`: no runs", [GAP] * len(digits)))
            continue
        lines.append(("", f"hpe_bench `{row.preset}` (n={res.n})",
                      [_ours(c, res.n, d, pm) for c, d in zip(res.cells, digits)]))
        if any(c.diff is not None for c in res.cells):
            lines.append(("", delta, [_num(c.diff, d, sign=True) if c.diff is not None else ""
                                      for c, d in zip(res.cells, digits)]))
    return lines


def _notes(table: Table, results: list[RowResult], protocol_map: dict[str, str]) -> list[str]:
    notes = [f"{r.row.name}: {r.row.note}" for r in results if r.row.note]
    notes += [w for r in results for w in r.warnings]
    notes += [f"hpe_bench's {PROTOCOL_NAMES.get(p, p)} columns come from runs tested on {q}"
              for p, q in protocol_map.items() if p in table.protocols]
    return notes


def to_markdown(table: Table, title: str, results: list[RowResult], protocol_map: dict[str, str] | None = None) -> str:
    head = ["Method", "Source", *_labels(table)]
    out = [f"**{title} {table.key.replace('table', 'Table ')}**: {table.caption} "
           f"hpe_bench: mean ± standard error over seeds (n runs); Δ = hpe_bench − published; {GAP} = no runs.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(table.columns)]
    for method, source, cells in _lines(table, results, "±", "Δ"):
        out.append("| " + " | ".join([method, source, *cells]) + " |")
    notes = _notes(table, results, protocol_map or {})
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "⋆": r"$^\star$", "†": r"$^\dagger$",
        "°": r"$^\circ$", "²": r"$^2$", "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "`": "", "−": "$-$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table, title: str, results: list[RowResult], protocol_map: dict[str, str] | None = None) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    ncol = len(table.columns)
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + tex_escape(f"{title} {table.key.replace('table', 'Table ')}: {table.caption} "
                                     "hpe_bench: mean ± standard error over seeds (n runs); Δ = hpe_bench − published.")
           + "}", r"\begin{tabular}{ll" + "r" * ncol + "}", r"\toprule"]
    protocols = table.protocols
    if len(protocols) > 1:
        spans, rules, start = [], [], 3
        for p in protocols:
            k = sum(c.protocol == p for c in table.columns)
            spans.append(r"\multicolumn{%d}{c}{%s}" % (k, tex_escape(PROTOCOL_NAMES.get(p, p))))
            rules.append(r"\cmidrule(lr){%d-%d}" % (start, start + k - 1))
            start += k
        out += [" & & " + " & ".join(spans) + r" \\", "".join(rules)]
    out.append(" & ".join(["Method", "Source", *(tex_escape(c.label) for c in table.columns)]) + r" \\")
    out.append(r"\midrule")
    for method, source, cells in _lines(table, results, "±", "Δ"):
        out.append(" & ".join(tex_escape(x) for x in (method, source, *cells)) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    notes = _notes(table, results, protocol_map or {})
    if notes:
        out.append(r"\par\footnotesize " + tex_escape("; ".join(notes)) + ".")
    out.append(r"\end{table}")
    return "\n".join(out)


def to_frame(table: Table, results: list[RowResult]) -> pd.DataFrame:
    """Long format: one line per (row, column), with the run directories behind hpe_bench's value."""
    records = []
    for res in results:
        for col, cell in zip(table.columns, res.cells):
            records.append({
                "paper": table.paper, "table": table.key, "row": res.row.name, "preset": res.row.preset or "",
                "peer": res.row.peer, "protocol": col.protocol, "source_protocol": cell.source_protocol,
                "metric": col.metric, "label": col.label, "published": cell.published, "mean": cell.mean,
                "se": cell.se, "n": cell.n, "diff": cell.diff, "config": res.config,
                "run_dirs": ";".join(cell.run_dirs)})
    return pd.DataFrame(records)
