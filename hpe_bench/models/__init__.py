"""Model architectures: one module per architecture, registered by name (timm style).

A new model is one module here (decorated with ``@register_model``, with an ``export_spec()`` method saying
what it exports) plus one YAML in ``conf/model``; ``list_models()`` discovers modules on first use, so nothing
else needs editing (docs/adding_a_model.md).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_HELPERS = {"backbones", "crop"}  # support modules, not architectures


def register_model(name: str):
    """Class decorator adding an architecture to the registry under ``name``."""
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls
    return wrap


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _HELPERS:
            importlib.import_module(f"{__name__}.{info.name}")


def list_models() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def model_name(net: nn.Module) -> str | None:
    """The name ``net``'s class is registered under (None for an unregistered class)."""
    _discover()
    return next((name for name, cls in _REGISTRY.items() if cls is type(net)), None)


def create_model(name: str, **kwargs) -> nn.Module:
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
