"""Loss recipes. Each is an ``nn.Module`` with ``forward(pred, batch) -> dict`` holding the total under
``"loss"`` and each weighted term under its name; terms skip samples that lack their label."""
