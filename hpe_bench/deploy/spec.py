"""What a network exports, declared by the network itself (``export_spec()`` beside its ``forward``).

Each registered architecture in ``hpe_bench.models`` defines ``export_spec(self) -> ExportSpec``: the
``CropInput`` keys it reads (the ONNX inputs, in order), the keys of its output dict it exports with a
description each, the input-independent outputs written to the sidecar instead of the graph, and the image
channels it expects. ``hpe_bench.export`` and ``benchmarks/bench_latency.py`` read only this, so adding a model
touches no deployment code. Crop size, box scale and normalisation are the run's ``model.crop`` (``CropInput``);
the sidecar records them from there (``export.preprocessing_spec``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The network inputs a CropInput produces (its forward's keys); shapes use N for the dynamic batch axis.
INPUT_DESCRIPTIONS = {
    "image": "(N, C, S, S) float32 normalised crop (see preprocessing)",
    "box": "(N, 4) square crop box (x0, y0, x1, y1) in full-image pixels",
    "K": "(N, 3, 3) full-image intrinsics",
    "K_crop": "(N, 3, 3) crop intrinsics A @ K",
    "A": "(N, 3, 3) affine map full-image pixels -> crop pixels (geometry.crop_transform; last row 0 0 1)",
    "bbox_info": "(N, 3) ((cx_box - cx) / fx, (cy_box - cy) / fx, side / fx)",
    "image_size": "(N, 2) full image (W, H) in pixels",
}

# The outputs of every 6DoF head in this package (rotation head -> camera, translation in metres).
POSE_OUTPUTS = {
    "R": ("R", "(N, 3, 3) head rotation, head frame -> camera frame (OpenCV axes)"),
    "t": ("t", "(N, 3) head translation in the camera frame, metres"),
}


@dataclass(frozen=True)
class ExportSpec:
    """``inputs``: ONNX inputs (``CropInput`` keys, in order); ``outputs``: ONNX name -> (net output key,
    description); ``constants``: input-independent net outputs stored in the sidecar; ``in_chans``: image
    channels the net expects (``model.crop.grayscale=true`` gives 1); ``kind``: the registered model name
    (filled by ``hpe_bench.deploy.wrappers.export_spec``)."""
    inputs: tuple[str, ...]
    outputs: dict[str, tuple[str, str]]
    constants: tuple[str, ...] = field(default_factory=tuple)
    in_chans: int = 3
    kind: str = ""

    def __post_init__(self):
        unknown = [n for n in self.inputs if n not in INPUT_DESCRIPTIONS]
        if unknown:
            raise ValueError(f"ExportSpec inputs {unknown} are not CropInput keys {sorted(INPUT_DESCRIPTIONS)}")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "constants", tuple(self.constants))
