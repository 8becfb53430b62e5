"""What each network exports: named ONNX inputs (``CropInput`` keys) and named outputs (keys of the net's
output dict), plus a wrapper that turns the dict-in / dict-out nets into the positional form ONNX needs.

The wrapper only selects; every number is computed by the net's own ``forward``, so the ONNX graph is exactly
the PyTorch model in eval mode (dropout off, BatchNorm with running statistics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..models.direct_regression import DirectRegression
from ..models.opnet import OpNet
from ..models.trg import TRG

# ONNX output name -> (net output key, description). Shapes use N for the (dynamic) batch axis.
OPNET_OUTPUTS = {
    "quat": ("quat", "(N, 4) unit quaternion (x, y, z, w), w > 0: head (BFM68) frame -> crop frame"),
    "R_crop": ("R_crop", "(N, 3, 3) rotation matrix of quat (crop frame, orthographic)"),
    "coord": ("coord", "(N, 3) head position (x, y) and size in normalised crop units ([-1, 1], y down)"),
    "roi": ("roi", "(N, 4) face box (x0, y0, x1, y1) in normalised crop units"),
    "shape_params": ("shape_params", "(N, 50) BFM68 shape coefficients (40 identity + 10 expression)"),
    "landmarks": ("landmarks_crop", "(N, 68, 3) posed BFM68 landmarks in normalised crop units"),
    "rot_scale_tril": ("rot_scale_tril", "(N, 3, 3) Cholesky factor of the rotation-error covariance (so(3), rad)"),
    "coord_scale_tril": ("coord_scale_tril", "(N, 3, 3) Cholesky factor of the coord covariance"),
}
OPNET_CONSTANTS = ("roi_scale", "points_scale", "shape_scale")  # input-independent: written to the sidecar

TRG_OUTPUTS = {
    "R": ("R", "(N, 3, 3) head rotation, head frame -> camera frame (OpenCV axes)"),
    "t": ("t", "(N, 3) head translation in the camera frame, metres"),
    "vertices": ("vertices", "(N, 1220, 3) dense ARKit face in the head frame, metres"),
    "landmarks_2d": ("landmarks_2d", "(N, 68, 2) landmarks in full-image pixels"),
}

DIRECT_OUTPUTS = {
    "R": ("R", "(N, 3, 3) head rotation, head frame -> camera frame"),
    "t": ("t", "(N, 3) head translation in the camera frame, metres"),
}

INPUT_DESCRIPTIONS = {
    "image": "(N, C, S, S) float32 normalised crop (see preprocessing)",
    "box": "(N, 4) square crop box (x0, y0, x1, y1) in full-image pixels",
    "K": "(N, 3, 3) full-image intrinsics",
    "K_crop": "(N, 3, 3) crop intrinsics A @ K",
    "A": "(N, 3, 3) affine map full-image pixels -> crop pixels (geometry.crop_transform; last row 0 0 1)",
    "bbox_info": "(N, 3) ((cx_box - cx) / fx, (cy_box - cy) / fx, side / fx)",
    "image_size": "(N, 2) full image (W, H) in pixels",
}


@dataclass
class ExportSpec:
    """``kind``; ONNX ``inputs`` (CropInput keys); ``outputs``: ONNX name -> (net key, description);
    ``constants``: input-independent net outputs stored in the sidecar instead of the graph."""
    kind: str
    inputs: list[str]
    outputs: dict[str, tuple[str, str]]
    constants: tuple[str, ...] = field(default_factory=tuple)


def export_spec(net: nn.Module) -> ExportSpec:
    """The default export of a known network; raises ``TypeError`` naming the class otherwise."""
    if isinstance(net, OpNet):
        return ExportSpec("opnet", ["image"], dict(OPNET_OUTPUTS), OPNET_CONSTANTS)
    if isinstance(net, TRG):
        inputs = ["image", "box", "K", "K_crop", "A", "bbox_info"]
        if net.principal == "image_centre":
            inputs.append("image_size")
        return ExportSpec("trg", inputs, dict(TRG_OUTPUTS))
    if isinstance(net, DirectRegression):
        inputs = ["image", "bbox_info"] if net.use_bbox_info else ["image"]
        return ExportSpec("direct_regression", inputs, dict(DIRECT_OUTPUTS))
    raise TypeError(f"no ONNX export defined for {type(net).__name__}; known: OpNet, TRG, DirectRegression "
                    "(add an ExportSpec in hpe_bench/deploy/wrappers.py)")


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
    return ExportSpec(spec.kind, spec.inputs, present, constants)


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
