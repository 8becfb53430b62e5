"""Evaluation protocols as a registry: one YAML per protocol in this folder (package data), nothing central.

A protocol names a test set exactly: the ``conf/data`` option whose test split it is (``data``) and the
overrides that make that split this protocol (``overrides``), its expected sample count (``num_samples``;
null where it is the size of the user's copy), the box source, the Euler rule its per-axis errors are
reported under and the calibration. Every metrics file carries its protocol's card (``protocol``, see
docs/outputs.md), so that numbers from different protocols are never compared by accident; a run tests on
a list of protocols with ``test_on=[...]`` (docs/running.md).

Adding a protocol: drop ``<name>.yaml`` here (keys of ``Protocol``); ``tests/test_protocols.py`` checks that
every entry composes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import yaml

from ..geometry.euler import EULER_RULES as RULES

__all__ = ["Protocol", "ProtocolError", "PROTOCOL_KEYS", "registry", "get_protocol", "protocol_for_data",
           "protocol_card"]


class ProtocolError(KeyError):
    """Unknown protocol name or malformed registry entry; the message names the entry and the key."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Protocol:
    name: str
    data: str                                  # conf/data option
    euler_rule: str
    box: str
    calibration: str
    description: str = ""
    num_samples: int | None = None             # expected test samples (None: the size of the user's copy)
    overrides: tuple[str, ...] = ()            # Hydra overrides of the data option that make this protocol
    test_of: tuple[str, ...] = ()              # training data options whose own test split is this protocol
    split: Mapping[str, Any] = field(default_factory=dict)  # stated split (e.g. BIWI 70/30 sequences)

    def card(self, num_samples: int | None = None) -> dict[str, Any]:
        """The ``protocol`` card of a metrics file; ``num_samples`` (tested) flags an incomplete test set."""
        card = asdict(self)
        card["overrides"], card["test_of"] = list(self.overrides), list(self.test_of)
        card["split"] = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in self.split.items()}
        if num_samples is not None and self.num_samples is not None:
            card["complete"] = int(num_samples) == self.num_samples
        return card


PROTOCOL_KEYS = tuple(Protocol.__dataclass_fields__)
_REQUIRED = ("name", "data", "euler_rule", "box", "calibration")


def _parse(source: str, raw: Any) -> Protocol:
    if not isinstance(raw, dict):
        raise ProtocolError(f"protocol file {source}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(PROTOCOL_KEYS))
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
    if unknown or missing:
        raise ProtocolError(f"protocol file {source}: unknown keys {unknown}, missing keys {missing} "
                            f"(keys: {list(PROTOCOL_KEYS)})")
    if raw["euler_rule"] not in RULES:
        raise ProtocolError(f"protocol file {source}: euler_rule {raw['euler_rule']!r} is not one of {list(RULES)}")
    n = raw.get("num_samples")
    if n is not None and (not isinstance(n, int) or n <= 0):
        raise ProtocolError(f"protocol file {source}: num_samples must be a positive integer or null, got {n!r}")
    split = {k: tuple(str(s) for s in v) if isinstance(v, list) else v for k, v in (raw.get("split") or {}).items()}
    return Protocol(**{**raw, "overrides": tuple(str(o) for o in raw.get("overrides") or ()),
                       "test_of": tuple(str(o) for o in raw.get("test_of") or ()), "split": split})


@lru_cache(maxsize=1)
def registry() -> dict[str, Protocol]:
    """Every protocol of this folder by name (sorted)."""
    entries: dict[str, Protocol] = {}
    for item in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".yaml"):
            continue
        source = f"hpe_bench/protocols/{item.name}"
        try:
            raw = yaml.safe_load(item.read_text())
        except yaml.YAMLError as err:
            raise ProtocolError(f"protocol file {source}: not YAML ({err})") from None
        proto = _parse(source, raw)
        if f"{proto.name}.yaml" != item.name:
            raise ProtocolError(f"protocol file {source}: name {proto.name!r} differs from the file name")
        entries[proto.name] = proto
    return entries


def get_protocol(name: str) -> Protocol:
    reg = registry()
    if name not in reg:
        raise ProtocolError(f"unknown protocol {name!r}; registered: {', '.join(reg)} (hpe_bench/protocols/)")
    return reg[name]


def protocol_for_data(option: str | None) -> Protocol | None:
    """The protocol a run of data option ``option`` tests on without ``test_on``: the entry with this data option
    and no overrides, or the one listing it in ``test_of``; None for an unregistered option."""
    for proto in registry().values():
        if proto.data == option and not proto.overrides:
            return proto
    return next((p for p in registry().values() if option in p.test_of), None)


def protocol_card(option: str | None, num_samples: int | None = None, name: str | None = None) -> dict[str, Any]:
    """The card of protocol ``name`` (or of data option ``option``'s own test split); an unregistered option gets a
    card saying so, so that a table never groups it with a registered protocol."""
    proto = get_protocol(name) if name else protocol_for_data(option)
    if proto is None:
        return {"name": option, "registered": False}
    return proto.card(num_samples)
