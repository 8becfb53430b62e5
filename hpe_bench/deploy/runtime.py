"""ONNX Runtime sessions set up for low-latency single-image inference, and a sidecar reader.

The settings (``latency_session_options``) are what ``benchmarks/bench_latency.py`` measures: a fixed small
thread pool for one model call (``intra_op_num_threads``), no inter-op parallelism, sequential execution and
every graph optimisation (constant folding, Conv+BN / Conv+ReLU fusion, NCHWc layout on x86).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch

from .. import geometry as G

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def latency_session_options(threads: int = 2, level: str = "all", optimized_model_path: str | Path | None = None,
                            spinning: bool = True) -> ort.SessionOptions:
    """Session options for batch-1 latency.

    Args:
        threads: intra-op threads (the calling thread counts as one of them).
        level: graph optimisation level ``disable | basic | extended | all``.
        optimized_model_path: also write the optimised graph there (for inspection; with ``level="all"`` it
            holds CPU-specific layout ops, so ship the portable model and let ORT optimise at load).
        spinning: let idle pool threads spin between ops instead of sleeping (lower latency, more CPU).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = LEVELS[level]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


def make_session(model_path: str | Path, threads: int = 2, **options: Any) -> ort.InferenceSession:
    """CPU ``InferenceSession`` with ``latency_session_options(threads, **options)``."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return ort.InferenceSession(str(path), latency_session_options(threads, **options),
                                providers=["CPUExecutionProvider"])


def run_session(session: ort.InferenceSession, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run with named inputs (numpy or torch, cast to float32 C-contiguous) -> named outputs."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise KeyError(f"missing ONNX inputs {missing}; the model takes {names}")
    feed = {n: np.ascontiguousarray(np.asarray(inputs[n].detach().cpu() if hasattr(inputs[n], "detach") else inputs[n],
                                               dtype=np.float32)) for n in names}
    outs = session.run(None, feed)
    return {o.name: v for o, v in zip(session.get_outputs(), outs)}


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The JSON written next to an exported model (``model.onnx`` -> ``model.json``)."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"sidecar {path} not found next to {model_path}")
    return json.loads(path.read_text())


def crop_inputs(image: np.ndarray, box: Sequence[float], preprocessing: Mapping[str, Any],
                K: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``CropInput`` with OpenCV for one image (no model, no kornia): every ONNX input of the exports.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
        box: face box ``(x0, y0, x1, y1)`` in pixels (before ``box_scale``).
        preprocessing: the sidecar's ``"preprocessing"`` entry.
        K: ``(3, 3)`` intrinsics; default the fallback ``f = W + H``, principal point at the image centre.
    Returns ``image (1, C, S, S)``, ``box``, ``A``, ``K``, ``K_crop`` (``(1, 3, 3)``), ``bbox_info (1, 3)``, float32.
    On float images OpenCV's bilinear ``warpAffine`` with ``A[:2]`` matches the torch (kornia) crop to ~1e-5
    (tests/test_export.py), since both place integer coordinates on pixel centres.
    """
    import cv2

    rules = {k: preprocessing.get(k, d) for k, d in (("mapping", "corner"), ("resize", "bilinear"),
                                                       ("bbox_reference", "principal_point"), ("quantize", False))}
    if rules != {"mapping": "corner", "resize": "bilinear", "bbox_reference": "principal_point", "quantize": False}:
        raise NotImplementedError(f"crop_inputs implements hpe_bench's own crop only; this export was made with the "
                                  f"authors' input conventions {rules} (model=*_code): build its inputs with "
                                  f"hpe_bench.models.crop.CropInput")
    S = int(preprocessing["crop_size"])
    H, W = image.shape[:2]
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    # Every convention (square box, crop matrix, fallback intrinsics, I_bbox) comes from hpe_bench.geometry,
    # evaluated once in float64; only the warp and the normalisation run in numpy/OpenCV.
    sq_t = G.square_box(torch.as_tensor(box, dtype=torch.float64), float(preprocessing["box_scale"]))
    A_t = G.crop_transform(sq_t, S)
    K_t = G.fallback_intrinsics(W, H, torch.float64) if K is None else torch.as_tensor(K, dtype=torch.float64)
    sq, A, K = sq_t.numpy(), A_t.numpy(), K_t.numpy()
    bbox_info = G.box_features(sq_t, K_t).numpy()
    crop = cv2.warpAffine(img, A[:2], (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if preprocessing["grayscale"]:
        crop = crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # kornia rgb_to_grayscale weights
    crop = crop.reshape(S, S, -1)
    crop = (crop - np.asarray(preprocessing["mean"], np.float32)) / np.asarray(preprocessing["std"], np.float32)
    out = {"image": crop.transpose(2, 0, 1)[None], "box": sq[None], "A": A[None], "K": K[None],
           "K_crop": (A @ K)[None], "bbox_info": bbox_info[None]}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
