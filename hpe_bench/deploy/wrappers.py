"""The positional wrapper ONNX needs around the dict-in / dict-out nets, and the consistent example inputs it
is traced and checked with. What a net exports (inputs, outputs, constants) is its own ``export_spec()``
(``hpe_bench.deploy.spec``), declared beside its definition; nothing here knows a model class.

The wrapper only selects; every number is computed by the net's own ``forward``, so the ONNX graph is exactly
the PyTorch model in eval mode (dropout off, BatchNorm with running statistics).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..models import model_name
from .spec import INPUT_DESCRIPTIONS, ExportSpec

__all__ = ["INPUT_DESCRIPTIONS", "ExportSpec", "ExportWrapper", "example_inputs", "export_spec", "net_outputs",
           "select_outputs"]


def export_spec(net: nn.Module) -> ExportSpec:
    """The net's own ``export_spec()`` with ``kind`` = its registered model name; ``TypeError`` naming the
    class for a net that declares none."""
    declare = getattr(net, "export_spec", None)
    if not callable(declare):
        raise TypeError(f"{type(net).__name__} declares no ONNX export: define export_spec(self) -> "
                        "hpe_bench.deploy.spec.ExportSpec beside its forward (docs/adding_a_model.md)")
    spec = declare()
    return replace(spec, kind=spec.kind or model_name(net) or type(net).__name__.lower())


def select_outputs(spec: ExportSpec, available: Sequence[str], requested: Sequence[str] | None = None) -> ExportSpec:
    """Keep the outputs the net produces (e.g. no landmarks for OpNet ``landmarks=False``), or exactly
    ``requested`` (ONNX names); an unknown or unavailable requested name raises ``KeyError`` listing the choices."""
    present = {name: v for name, v in spec.outputs.items() if v[0] in available}
    if requested:
        missing = [n for n in requested if n not in present]
        if missing:
            raise KeyError(f"outputs {missing} not available for {spec.kind}; choose from {sorted(present)}")
        present = {n: present[n] for n in requested}
    if not present:
        raise KeyError(f"{spec.kind}: none of the outputs {sorted(spec.outputs)} is produced by the net")
    constants = tuple(k for k in spec.constants if k in available)
    return replace(spec, outputs=present, constants=constants)


class ExportWrapper(nn.Module):
    """``forward(*inputs)`` in ``input_names`` order -> tuple of the net's outputs ``output_keys``."""

    def __init__(self, net: nn.Module, input_names: Sequence[str], output_keys: Sequence[str]):
        super().__init__()
        self.net, self.input_names, self.output_keys = net, list(input_names), list(output_keys)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        pred = self.net(dict(zip(self.input_names, inputs)))
        return tuple(pred[k] for k in self.output_keys)


def example_inputs(crop: nn.Module, input_names: Sequence[str], batch_size: int = 2, seed: int = 0,
                   image_hw: tuple[int, int] = (240, 320)) -> dict[str, Tensor]:
    """Random but consistent network inputs, made by the real ``crop`` (``CropInput``) from random images,
    boxes inside them and intrinsics, so ``A``, ``K_crop`` and ``bbox_info`` agree as in training."""
    gen = torch.Generator().manual_seed(seed)
    H, W = image_hw
    B = batch_size
    side = (0.25 + 0.3 * torch.rand(B, generator=gen)) * min(H, W)
    x0 = torch.rand(B, generator=gen) * (W - side)
    y0 = torch.rand(B, generator=gen) * (H - side)
    f = (0.8 + 0.6 * torch.rand(B, generator=gen)) * (W + H) / 2
    K = torch.zeros(B, 3, 3)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, W / 2, H / 2, 1.0
    batch = {"image": torch.rand(B, 3, H, W, generator=gen), "box": torch.stack([x0, y0, x0 + side, y0 + side], -1),
             "K": K, "has_K": torch.ones(B, dtype=torch.bool)}
    with torch.no_grad():
        inputs = dict(crop(batch))
    inputs["image_size"] = torch.tensor([[float(W), float(H)]]).expand(B, 2).contiguous()
    return {k: inputs[k].float().contiguous() for k in input_names}


def net_outputs(net: nn.Module, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Eval-mode forward without gradients (dict in, dict out)."""
    net.eval()
    with torch.no_grad():
        return dict(net(dict(inputs)))
