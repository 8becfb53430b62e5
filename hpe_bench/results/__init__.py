"""The papers' published numbers, machine-readable: ``hpe_bench/results/<paper>.yaml`` (package data).

One file per paper (``opnet.yaml``: OpNet Tables 1-3; ``trg.yaml``: TRG Tables 1-9), transcribed from the
papers' text. Per table: a caption, the metric columns (each a test ``protocol`` - a ``conf/data`` option
such as ``aflw2000``, ``arkitface``, ``biwi_6dof`` - and a ``metric`` key of metrics.json, i.e. of
``hpe_bench.metrics.registry.METRICS``), and rows. A row is either hpe_bench's run of an experiment preset
(``preset: <conf/experiment option>``, runnable) or a published reference (``peer: true``, or ``preset:
null`` with a ``note`` saying why it cannot run here). ``values`` are the published numbers in column order
(``null`` where the paper prints "-", or the whole list ``null`` where the paper text lost the row's numbers).

``load_paper(name)`` / ``load_all()`` read and validate them; errors name the file and the key.
``protocol_of(record, stem)`` tells which protocol a metrics file holds (see docs/outputs.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["Column", "Row", "Table", "Paper", "PAPERS", "load_paper", "load_all", "DATA_TEST_PROTOCOL",
           "protocol_of", "ResultsIndexError"]

PAPERS = ("opnet", "trg")

DATA_TEST_PROTOCOL = {
    # conf/data option -> the protocol its test split is (training mixtures test on one benchmark)
    "mix_opnet_bl": "aflw2000", "mix_opnet_blfs": "aflw2000", "300wlp": "aflw2000", "opnet_h5": "aflw2000",
    "mix_trg": "arkitface",
}
"""Training-data options whose test split is another option's protocol; every other option is its own."""


class ResultsIndexError(ValueError):
    """A results index file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Column:
    protocol: str
    metric: str
    label: str

    @property
    def key(self) -> str:
        return f"{self.protocol}/{self.metric}"


@dataclass(frozen=True)
class Row:
    name: str
    values: tuple[float | None, ...] | None  # None: the paper text lost this row's numbers
    preset: str | None = None
    peer: bool = False
    note: str = ""
    printed: Mapping[int, str] = field(default_factory=dict)  # column index -> the paper's own spelling

    @property
    def runnable(self) -> bool:
        return self.preset is not None


@dataclass(frozen=True)
class Table:
    paper: str
    key: str
    caption: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    pin: bool = True  # rows appear as lines of the paper text (tests/test_results_index.py)
    digits: int = 2   # decimals the paper prints its values with

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.protocol for c in self.columns))

    @property
    def presets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.preset for r in self.rows if r.preset))


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    source: str
    note: str
    tables: dict[str, Table]


def _path(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(f"{name}.yaml")))


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ResultsIndexError(f"{where}: {msg}")


def _row(raw: Any, ncols: int, where: str) -> Row:
    _require(isinstance(raw, dict) and "name" in raw, where, "a row needs a mapping with 'name'")
    values = raw.get("values")
    if values is not None:
        _require(isinstance(values, list) and len(values) == ncols, f"{where}.values",
                 f"expected a list of {ncols} numbers or nulls, got {values!r}")
        _require(all(v is None or isinstance(v, (int, float)) for v in values), f"{where}.values",
                 f"non-numeric entry in {values!r}")
        values = tuple(None if v is None else float(v) for v in values)
    peer, preset = bool(raw.get("peer", False)), raw.get("preset")
    _require(not (peer and preset), where, "a peer row cannot have a preset")
    _require(peer or "preset" in raw, where, "a row is either 'peer: true' or has 'preset' (null if not runnable)")
    _require(preset is not None or peer or raw.get("note"), where, "a non-runnable row needs a 'note' saying why")
    return Row(name=str(raw["name"]), values=values, preset=preset, peer=peer, note=str(raw.get("note", "")),
               printed={int(k): str(v) for k, v in (raw.get("printed") or {}).items()})


def load_paper(name: str, path: str | Path | None = None) -> Paper:
    """Read and validate ``hpe_bench/results/<name>.yaml`` (or ``path``)."""
    path = Path(path) if path else _path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ResultsIndexError(f"cannot read results index {path}: {err}") from err
    _require(isinstance(raw, dict) and isinstance(raw.get("tables"), dict), str(path), "needs a 'tables' mapping")
    tables = {}
    for key, t in raw["tables"].items():
        where = f"{path}: tables.{key}"
        _require(isinstance(t, dict) and t.get("columns") and t.get("rows"), where, "needs 'columns' and 'rows'")
        cols = []
        for i, c in enumerate(t["columns"]):
            _require(isinstance(c, dict) and {"protocol", "metric"} <= set(c), f"{where}.columns[{i}]",
                     "needs 'protocol' and 'metric'")
            cols.append(Column(str(c["protocol"]), str(c["metric"]), str(c.get("label", c["metric"]))))
        rows = tuple(_row(r, len(cols), f"{where}.rows[{i}]") for i, r in enumerate(t["rows"]))
        tables[str(key)] = Table(paper=str(raw.get("paper", name)), key=str(key), caption=str(t.get("caption", "")),
                                 columns=tuple(cols), rows=rows, pin=bool(t.get("pin", True)),
                                 digits=int(t.get("digits", 2)))
    return Paper(name=str(raw.get("paper", name)), title=str(raw.get("title", name)),
                 source=str(raw.get("source", "")), note=str(raw.get("note", "")), tables=tables)


def load_all() -> dict[str, Paper]:
    return {name: load_paper(name) for name in PAPERS}


def protocol_of(record: Mapping[str, Any], stem: str = "metrics") -> str | None:
    """The test protocol a metrics file holds: ``metrics/<protocol>.json`` names it in its file name, a
    record may name it (``protocol``), else the run's ``data`` option (mapped by ``DATA_TEST_PROTOCOL``)."""
    if stem != "metrics":
        return stem
    card = record.get("protocol")  # a protocol card (hpe_bench.protocols) or, in older files, its name
    if isinstance(card, Mapping) and card.get("name"):
        return str(card["name"])
    if card and not isinstance(card, Mapping):
        return str(card)
    data = record.get("data")
    return DATA_TEST_PROTOCOL.get(data, data) if data else None
