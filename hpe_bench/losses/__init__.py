"""Loss recipes. Each is an ``nn.Module`` with ``forward(pred, batch, inputs) -> dict`` holding the total under
``"loss"`` and each weighted term under its name; terms skip samples that lack their label.

``pred`` is the network's output (predictions only), ``batch`` the schema batch with its labels, ``inputs`` the
network's input (``CropInput``'s output: ``image``, ``box``, ``A``, ``K``, ``K_crop``, ``has_K``, ``bbox_info``),
from which a loss reads the crop it needs to bring labels into the network's space (docs/conventions.md)."""
