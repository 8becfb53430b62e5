"""Offline-safe pretrained backbones: no hang without network, a warning naming the model, random init."""
import logging
import socket
import time

import pytest
import torch

from hpe_bench.models import backbones


def _closed_port() -> int:
    with socket.socket() as s:  # bind then close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_detected_quickly(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    assert backbones.hub_reachable(timeout=2.0) is False
    assert time.monotonic() - start < 5


def test_pretrained_without_network_and_without_offline_flag_falls_back_fast(monkeypatch, caplog):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hpe-bench-cache")  # nothing cached either
    before = hub.constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        net = backbones.create_backbone("resnet10t", pretrained=True)
    assert time.monotonic() - start < 20
    assert any("resnet10t" in r.getMessage() and "random init" in r.getMessage() and "unreachable" in r.getMessage()
               for r in caplog.records)
    assert hub.constants.HF_HUB_OFFLINE == before  # the offline switch is restored
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, net.num_features)
