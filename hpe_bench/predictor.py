"""Run a trained model on one image and its face boxes: from a Lightning checkpoint or an exported ONNX model.

Both backends answer ``predictor(image, boxes, K) -> dict`` of numpy arrays for the ``N`` boxes:
``R (N, 3, 3)`` head -> camera, ``t (N, 3)`` metres (absent if the model predicts none), and where the model
has them ``landmarks_2d (N, 68, 2)`` full-image pixels, ``vertices (N, V, 3)`` head frame metres and
``uncertainty`` ``{name: (N,)}`` (OpNet: ``sigma_rot_frobenius``, rad^2). ``K (3, 3)`` is the user's
calibration, or ``None`` for the fallback rule ``geometry.fallback_intrinsics`` (``f = W + H``): the crop
then works exactly as on a dataset without ``K`` (``has_K`` false), and the translation is relative only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import geometry as G
from .detect import InputError


def _schema_batch(image: np.ndarray, boxes: np.ndarray, K: np.ndarray | None) -> dict[str, Any]:
    """The collated-batch fields ``CropInput`` reads, for N boxes on one image."""
    H, W = image.shape[:2]
    N = len(boxes)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].expand(N, 3, H, W)
    has_K = K is not None
    K_t = torch.as_tensor(K if has_K else np.zeros((3, 3)), dtype=torch.float32).expand(N, 3, 3)
    return {"image": img, "box": torch.as_tensor(boxes, dtype=torch.float32), "K": K_t,
            "has_K": torch.full((N,), has_K, dtype=torch.bool)}


def _numpy_outputs(pred: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("R", "t", "landmarks_2d", "vertices"):
        if key in pred and torch.is_tensor(pred[key]):
            out[key] = pred[key].detach().double().cpu().numpy()
    out["uncertainty"] = {k: torch.as_tensor(v).detach().double().cpu().numpy().reshape(-1)
                          for k, v in (pred.get("per_sample") or {}).items()}
    return out


class TorchPredictor:
    """A net + crop rebuilt from a run's config (``run_info.json`` / ``.hydra/config.yaml``) and checkpoint."""

    backend = "checkpoint"

    def __init__(self, net: torch.nn.Module, crop: torch.nn.Module, source: str):
        self.net, self.crop, self.source = net.eval(), crop.eval(), source

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path) -> "TorchPredictor":
        from .export import build_model, find_run_dir, load_net_weights, load_run_config
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise InputError(f"checkpoint not found: {ckpt}")
        try:
            cfg, cfg_path = load_run_config(find_run_dir(ckpt))
            net, crop = build_model(cfg, str(cfg_path))
            load_net_weights(net, ckpt)
        except (FileNotFoundError, KeyError) as err:
            raise InputError(f"cannot load the model of {ckpt}: {err}") from err
        return cls(net, crop, str(ckpt))

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: np.ndarray, K: np.ndarray | None) -> dict[str, Any]:
        inputs = self.crop(_schema_batch(image, boxes, K))
        return _numpy_outputs(self.net(inputs))


class OnnxPredictor:
    """An exported model (``python -m hpe_bench.export``) run by ONNX Runtime, one face at a time.

    OpNet's graph outputs crop-space quantities; they are decoded to camera frame with ``codecs.opnet.decode``
    (the same function its PyTorch ``forward`` calls), so both backends agree.
    """

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int = 2):
        from .deploy.runtime import make_session, read_sidecar
        path = Path(path)
        if not path.is_file():
            raise InputError(f"ONNX model not found: {path}")
        try:
            self.meta = read_sidecar(path)
        except FileNotFoundError as err:
            raise InputError(f"{err} (written by python -m hpe_bench.export)") from err
        self.session = make_session(path, threads=threads)
        self.kind, self.source = self.meta.get("model"), str(path)

    def _one(self, image: np.ndarray, box: np.ndarray, K: np.ndarray | None) -> dict[str, Any]:
        from .deploy.runtime import crop_inputs, run_session
        feed = crop_inputs(image, box, self.meta["preprocessing"], K)
        H, W = image.shape[:2]
        feed["image_size"] = np.asarray([[W, H]], np.float32)
        out = {k: torch.from_numpy(np.asarray(v)) for k, v in run_session(self.session, feed).items()}
        if self.kind != "opnet":
            return out
        from .codecs.opnet import decode
        inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
        inputs["has_K"] = torch.tensor([K is not None])
        raw = {"R_crop": out["R_crop"], "coord": out["coord"]}
        if "landmarks" in out:
            raw["landmarks_crop"] = out["landmarks"]
        pred = decode(raw, inputs)
        if "rot_scale_tril" in out:
            L = out["rot_scale_tril"]
            pred["per_sample"] = {"sigma_rot_frobenius": torch.linalg.matrix_norm(L @ L.transpose(-1, -2))}
        return pred

    def __call__(self, image: np.ndarray, boxes: np.ndarray, K: np.ndarray | None) -> dict[str, Any]:
        parts = [_numpy_outputs(self._one(image, b, K)) for b in np.asarray(boxes, np.float64)]
        out: dict[str, Any] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "uncertainty"}
        out["uncertainty"] = {k: np.concatenate([p["uncertainty"][k] for p in parts])
                              for k in parts[0]["uncertainty"]}
        return out


def load_predictor(model: str | Path) -> TorchPredictor | OnnxPredictor:
    """``.onnx`` -> ``OnnxPredictor``; anything else is a Lightning checkpoint of a run."""
    return OnnxPredictor(model) if str(model).endswith(".onnx") else TorchPredictor.from_checkpoint(model)


def intrinsics(values: list[float] | None, width: int, height: int) -> tuple[np.ndarray, str]:
    """``K (3, 3)`` and how it was chosen: the user's ``fx fy cx cy`` or the fallback rule (stated in outputs)."""
    if values is not None:
        fx, fy, cx, cy = (float(v) for v in values)
        if fx <= 0 or fy <= 0:
            raise InputError(f"--intrinsics: focal lengths must be positive, got fx={fx}, fy={fy}")
        return G.make_intrinsics(*(torch.tensor(v, dtype=torch.float64) for v in (fx, fy, cx, cy))).numpy(), "user"
    K = G.fallback_intrinsics(width, height, torch.float64).numpy()
    return K, "fallback f=W+H, principal point (W/2, H/2): translation relative only"
