"""timm backbones with an offline-safe ``pretrained`` switch."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

import timm
from torch import nn

log = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``) accepts a TCP connection within ``timeout`` s.

    Without this probe a machine with no network spends about a minute in hub retries before failing.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its local cache only (as ``HF_HUB_OFFLINE=1`` would) for this block."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub library: timm cannot download anyway
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_backbone(name: str, pretrained: bool = False, in_chans: int = 3, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): ``forward(x) -> (B, num_features)``.

    With ``pretrained=True`` the weights come from the timm/Hugging Face cache or hub. Where they cannot
    be had (``HF_HUB_OFFLINE=1``, hub unreachable, not cached) this warns, naming the model, and falls back
    to random initialisation within seconds instead of hanging or failing the run.
    """
    if pretrained:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")
        reachable = not offline and hub_reachable()
        try:
            with contextlib.nullcontext() if reachable else _hub_offline():
                return timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=0, **kwargs)
        except Exception as err:  # noqa: BLE001 - any hub/network/cache failure means "no weights"
            why = "HF_HUB_OFFLINE set" if offline else ("hub reachable" if reachable else "hub unreachable")
            log.warning("pretrained weights for timm model %r unavailable (%s, not in the local cache; %s: %s); "
                        "using random init", name, why, type(err).__name__, str(err)[:200])
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **kwargs)


def pretrained_cached(name: str) -> bool:
    """Whether timm's pretrained weights of ``name`` are in the local cache (loaded offline, no hub access): what a
    compute node without network would find (``hpe_bench.grid`` checks this before submitting a table)."""
    try:
        with _hub_offline():
            timm.create_model(name, pretrained=True, num_classes=0)
        return True
    except Exception:  # noqa: BLE001 - not cached, or no hub library
        return False
