"""int8 ONNX models: ONNX Runtime static quantisation calibrated on a dataset's crops, and the accuracy change
it costs, measured as int8 vs float32 predictions of the same network on a test split (docs/deployment.md).

Static (QDQ) quantisation: weights int8 per output channel, activations uint8 with ranges calibrated on real
network inputs (``CropInput`` crops of the dataset, the same preprocessing the export's sidecar records).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import geometry as G
from ..outputs import atomic_path

__all__ = ["network_input_batches", "quantize_int8", "compare_predictions"]

# What runs in int8: every node computed from the image alone (the CNN trunk: convolutions with their
# activations, pooling and additions, so ONNX Runtime keeps whole int8 chains). Nodes that read a geometry input
# (K, box, bbox_info, A, ...) directly or through earlier nodes stay float32: they mix values of very different
# ranges on one 8-bit scale (focal-length ratios of ~0.05 next to pooled features or pixel coordinates) -- the
# trained demo model lost 20 degrees when its head and geometry were quantised with its trunk, and lost nothing
# with them in float32 (docs/performance.md).
IMAGE_INPUT = "image"
# Ops ONNX Runtime's CPU provider has no int8 kernel for: quantising them only adds Q/DQ conversions around a
# float32 kernel (TRG's deconvolutions: ConvTranspose was 38 % of its int8 graph's time, DequantizeLinear 9 %).
# ``export.export_quantizable`` rewrites the usual deconvolutions as convolutions first (deploy.subpixel), so
# this only catches those without an exact sub-pixel form.
FLOAT_OPS = ("ConvTranspose",)
# Global poolings as torch exports them (``mean((2, 3))`` -> ReduceMean, ``adaptive_avg_pool2d(1)`` ->
# GlobalAveragePool): where the convolutional trunk ends and a per-image head begins (``pooled_head_nodes``).
GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def network_input_batches(crop: nn.Module, loader: Iterable[Mapping[str, Any]], input_names: Sequence[str],
                          max_batches: int | None = None, labels: list | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The ONNX inputs ``input_names`` (float32 numpy) of each schema batch of ``loader``, made by ``crop``.
    With a list ``labels``, each batch's ground-truth rotations are appended to it (``{"R": (B, 3, 3) float64,
    "has_R": (B,) bool}``), for the accuracy of each graph against the labels."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        if labels is not None and "R" in batch and "has_R" in batch:  # unlabelled data: no vs-GT figures
            labels.append({"R": torch.as_tensor(batch["R"], dtype=torch.float64),
                           "has_R": torch.as_tensor(batch["has_R"]).bool()})
        with torch.no_grad():
            inputs = dict(crop(batch))
        if "image_size" in input_names:
            H, W = batch["image"].shape[-2:]
            inputs["image_size"] = torch.tensor([[float(W), float(H)]]).expand(len(batch["image"]), 2)
        yield {k: np.ascontiguousarray(inputs[k].float().numpy()) for k in input_names}


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: Iterable[Mapping[str, np.ndarray]],
                  per_channel: bool = True, reduce_range: bool | None = None) -> Path:
    """Static int8 quantisation of ``fp32_path`` into ``out`` (atomic), calibrated on the input batches
    ``calibration`` (min/max of the activations). The image-only convolutional trunk is quantised; the nodes of
    ``float_nodes`` (geometry, the head on pooled features, ops without an int8 CPU kernel) stay float32.
    ``reduce_range`` (7-bit weights, for x86 CPUs without VNNI, where 8-bit ones can saturate): ``None`` picks it
    for the CPU this runs on (``hardware.cpu_has_vnni``), so quantise on the kind of CPU that will run the model."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(calibration)
    if not batches:
        raise ValueError("int8 calibration needs at least one batch of inputs")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:  # shape inference + graph cleanup, as ONNX Runtime recommends before quantising
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            src = prepared
        except Exception:  # noqa: BLE001 - optional step; quantise the graph as exported
            src = Path(fp32_path)
        if reduce_range is None:
            reduce_range = needs_reduce_range()
        quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=bool(reduce_range), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_nodes(src),
                        extra_options={"MatMulConstBOnly": True})
        prepared.unlink(missing_ok=True)
    return out


def needs_reduce_range() -> bool:
    """7-bit weights on x86 CPUs without int8 dot-product instructions (``hardware.cpu_has_vnni``); 8-bit on
    those with them and on other architectures (ARM's int8 kernels do not saturate)."""
    import platform

    from ..hardware import cpu_has_vnni
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and not cpu_has_vnni()


def geometry_nodes(path, image_input: str = IMAGE_INPUT) -> list[str]:
    """Names of the nodes of the ONNX graph at ``path`` (a file or a loaded ``GraphProto``) that depend on a graph input other than ``image_input``
    (directly or through earlier nodes): the part ``quantize_int8`` keeps in float32. A ``GridSample`` whose
    sampling grid alone is geometric is kept float32 but its output counts as image-derived (TRG's features
    sampled at projected landmarks). Unnamed nodes cannot be excluded by name and are left to the quantiser
    (torch's exporter names every node)."""
    graph = _graph(path)
    initializers = {t.name for t in graph.initializer}
    tainted = {i.name for i in graph.input if i.name != image_input and i.name not in initializers}
    excluded = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(name in tainted for name in node.input):
            if node.name:
                excluded.append(node.name)
            # GridSample reads its data at positions the geometry gives: its output has the data's range, so
            # what follows it is image-derived unless the data itself was not (the sampler stays float32)
            if node.op_type != "GridSample" or node.input[0] in tainted:
                tainted.update(node.output)
    return excluded


def pooled_head_nodes(path) -> list[str]:
    """Names of the nodes of the head on pooled features: a global pooling (``GLOBAL_POOLS``) and every node
    that depends on its output, where no convolution does (a squeeze-and-excitation pooling inside a trunk
    feeds convolutions and is not a head). ``quantize_int8`` keeps them in float32: their tensors are vectors
    per image, so int8 saves no compute there, while each quantised node adds conversions and puts outputs of
    different kinds (quaternion, coordinates, log-variances) on 8-bit scales; OpNet's int8 graph was faster and
    closer to float32 with its head in float32 (docs/performance.md)."""
    graph = _graph(path)
    head: list[str] = []
    for k, pool in enumerate(graph.node):
        if pool.op_type not in GLOBAL_POOLS:
            continue
        tainted, downstream = set(pool.output), [pool]
        for node in graph.node[k + 1:]:  # topologically sorted
            if any(name in tainted for name in node.input):
                downstream.append(node)
                tainted.update(node.output)
        if not any(n.op_type in ("Conv", "ConvTranspose") for n in downstream):
            head += [n.name for n in downstream if n.name]
    return list(dict.fromkeys(head))


def float_nodes(path: str | Path) -> list[str]:
    """The nodes ``quantize_int8`` leaves in float32: ``geometry_nodes``, ``pooled_head_nodes`` and the
    ``FLOAT_OPS`` nodes."""
    graph = _graph(path)
    no_kernel = [n.name for n in graph.node if n.op_type in FLOAT_OPS and n.name]
    return sorted(set(geometry_nodes(graph)) | set(pooled_head_nodes(graph)) | set(no_kernel))


def _graph(source):
    """The ``GraphProto`` of an ONNX file (or ``source`` itself when it already is one)."""
    import onnx
    if isinstance(source, onnx.GraphProto):
        return source
    return onnx.load(str(source), load_external_data=False).graph


def _rotation(outputs: Mapping[str, np.ndarray], names: Mapping[str, str]) -> torch.Tensor | None:
    """The rotation matrices among ONNX outputs (``names``: ONNX name -> net key): ``R`` or OpNet's ``R_crop``."""
    for onnx_name, key in names.items():
        if key in ("R", "R_crop"):
            return torch.as_tensor(outputs[onnx_name], dtype=torch.float64)
    return None


def compare_predictions(fp32: Sequence[Mapping[str, np.ndarray]], int8: Sequence[Mapping[str, np.ndarray]],
                        names: Mapping[str, str], euler_rule: str = "trg",
                        labels: Sequence[Mapping[str, torch.Tensor]] | None = None) -> dict[str, float]:
    """Accuracy change of int8 vs float32 on the same inputs: geodesic angle between their rotations (mean,
    max, degrees), Euler MAE (degrees, ``euler_rule``) and, where the net predicts ``t``, mean translation
    difference (mm); plus the mean absolute difference of every output. With ``labels`` (per batch, from
    ``network_input_batches``), also each graph's own error against the ground truth on the labelled samples:
    ``fp32_vs_gt`` / ``int8_vs_gt`` (geodesic and Euler MAE, degrees; ``num_labelled``).

    Only graphs whose rotation output is in the camera frame (``R``) are scored against the labels; OpNet's
    ``R_crop`` needs the decoding of ``hpe_bench.predictor`` first, so its vs-GT figures are left out."""
    result: dict[str, Any] = {"num_samples": int(sum(len(next(iter(b.values()))) for b in fp32))}
    R32 = [_rotation(b, names) for b in fp32]
    if R32[0] is not None:
        R32, R8 = torch.cat(R32), torch.cat([_rotation(b, names) for b in int8])
        geo = torch.rad2deg(G.geodesic_angle(R8, R32))
        result.update(geodesic_deg=float(geo.mean()), geodesic_max_deg=float(geo.max()),
                      mae_r_deg=float(G.euler_errors(R8, R32, euler_rule).mean()))
        if labels and "R" in names.values():
            gt, has = torch.cat([b["R"] for b in labels]), torch.cat([b["has_R"] for b in labels])
            result["num_labelled"] = int(has.sum())
            for kind, R in (("fp32", R32), ("int8", R8)):
                result[f"{kind}_vs_gt"] = {
                    "geodesic_deg": float(torch.rad2deg(G.geodesic_angle(R[has], gt[has])).mean()),
                    "mae_r_deg": float(G.euler_errors(R[has], gt[has], euler_rule).mean())}
    t_name = next((n for n, k in names.items() if k == "t"), None)
    if t_name is not None:
        dt = np.concatenate([np.linalg.norm(a[t_name] - b[t_name], axis=-1) for a, b in zip(fp32, int8)])
        result["t_diff_mm"] = float(dt.mean() * 1e3)
    for n in names:
        result[f"mean_abs_diff/{n}"] = float(np.mean(np.concatenate(
            [np.abs(a[n] - b[n]).reshape(len(a[n]), -1) for a, b in zip(fp32, int8)])))
    return result


def export_int8(fp32_path: str | Path, crop: nn.Module, input_names: Sequence[str], names: Mapping[str, str],
                datamodule, calib_batches: int, eval_batches: int, euler_rule: str = "trg",
                threads: int = 2, source: str | Path | None = None) -> dict[str, Any]:
    """``<model>.int8.onnx`` beside ``fp32_path``: quantised from ``source`` (the same network as an ONNX graph
    made for quantising, ``export.export_quantizable``; default ``fp32_path`` itself), calibrated on
    ``calib_batches`` batches of the datamodule's train split, compared with the float32 graph ``fp32_path`` on
    ``eval_batches`` batches of its test split. Returns the record the sidecar stores under ``int8``."""
    from .runtime import make_session

    fp32_path = Path(fp32_path)
    out = fp32_path.with_name(fp32_path.stem + ".int8.onnx")
    datamodule.prepare_data()
    datamodule.setup("fit")
    calib = network_input_batches(crop, datamodule.train_dataloader(), input_names, calib_batches)
    reduce_range = needs_reduce_range()
    quantize_int8(source or fp32_path, out, calib, reduce_range=reduce_range)
    datamodule.setup("test")
    labels: list = []
    inputs = list(network_input_batches(crop, datamodule.test_dataloader(), input_names, eval_batches, labels))
    runs = {}
    for kind, path in (("fp32", fp32_path), ("int8", out)):
        session = make_session(path, threads=threads)
        onames = [o.name for o in session.get_outputs()]
        runs[kind] = [dict(zip(onames, session.run(None, feed))) for feed in inputs]
    change = compare_predictions(runs["fp32"], runs["int8"], {n: names[n] for n in names if n in runs["fp32"][0]},
                                 euler_rule, labels)
    return {"file": out.name, "quantization": "onnxruntime static QDQ, int8 per-channel weights, uint8 "
            "activations, MinMax calibration",
            "reduce_range": reduce_range,  # 7-bit weights: made on (and for) an x86 CPU without VNNI
            "calibration": {"split": "train", "batches": calib_batches},
            "int8_vs_fp32": change | {"split": "test"}}
