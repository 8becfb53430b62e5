"""int8 accuracy report (hpe_bench.deploy.quantize.compare_predictions): known rotations, known answers."""
import math

import numpy as np
import pytest
import torch

from hpe_bench.deploy.quantize import compare_predictions


def rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], np.float32)


def test_int8_vs_fp32_and_each_vs_ground_truth():
    """fp32 predicts 10 deg about z, int8 12 deg, the labels are the identity (one sample unlabelled, 90 deg off,
    which must not count against the labels): 2 deg apart, 10 and 12 deg from the truth."""
    fp32 = [{"R": np.stack([rot_z(10), rot_z(10), rot_z(90)]), "t": np.zeros((3, 3), np.float32)}]
    int8 = [{"R": np.stack([rot_z(12), rot_z(12), rot_z(92)]), "t": np.full((3, 3), 0.001, np.float32)}]
    labels = [{"R": torch.eye(3, dtype=torch.float64).expand(3, 3, 3), "has_R": torch.tensor([True, True, False])}]
    out = compare_predictions(fp32, int8, {"R": "R", "t": "t"}, "trg", labels)
    assert out["num_samples"] == 3 and out["num_labelled"] == 2
    assert out["geodesic_deg"] == pytest.approx(2.0, abs=1e-3)
    assert out["fp32_vs_gt"]["geodesic_deg"] == pytest.approx(10.0, abs=1e-3)
    assert out["int8_vs_gt"]["geodesic_deg"] == pytest.approx(12.0, abs=1e-3)
    # a pure roll: the Euler MAE is the angle over 3 axes
    assert out["int8_vs_gt"]["mae_r_deg"] == pytest.approx(12.0 / 3, abs=1e-3)
    assert out["t_diff_mm"] == pytest.approx(math.sqrt(3) * 1.0, rel=1e-4)
    no_labels = compare_predictions(fp32, int8, {"R": "R"}, "trg")
    assert "fp32_vs_gt" not in no_labels and no_labels["geodesic_deg"] == pytest.approx(2.0, abs=1e-3)


class _Geo(torch.nn.Module):
    """image -> conv -> (a) pooled + geometry -> linear; (b) sampled at geometric points -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(5, 2)
        self.point = torch.nn.Linear(4, 2)

    def forward(self, image, K):
        f = torch.relu(self.conv(image))
        pooled = f.mean((2, 3))
        g = K[:, 0, 0:1] * 0.01
        out = self.head(torch.cat([pooled, g], 1))
        grid = (K[:, :2, 2] * 0.001).view(-1, 1, 1, 2)
        sampled = torch.nn.functional.grid_sample(f, grid, align_corners=True).flatten(1)
        return out, self.point(sampled)


def test_geometry_nodes_keep_what_reads_geometry_in_float32(tmp_path):
    """Nodes computed from the image alone are quantisable; anything reading K (the head after the concat, the
    grid's arithmetic, the sampler) is excluded; a layer on features sampled at geometric points is not."""
    from hpe_bench.deploy.quantize import geometry_nodes
    path = tmp_path / "geo.onnx"
    torch.onnx.export(_Geo(), (torch.rand(2, 3, 8, 8), torch.eye(3).expand(2, 3, 3)), str(path),
                      input_names=["image", "K"], output_names=["out", "pt"], opset_version=17, dynamo=False)
    import onnx
    nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    excluded = set(geometry_nodes(path))
    ops_excluded = [nodes[n] for n in excluded]
    assert "Conv" not in ops_excluded and "Relu" not in ops_excluded
    assert "Concat" in ops_excluded and "GridSample" in ops_excluded
    gemms = {n for n, op in nodes.items() if op in ("Gemm", "MatMul")}
    head = {n for n in gemms if "head" in n}
    point = {n for n in gemms if "point" in n}
    assert head and head <= excluded          # reads the concatenated geometry
    assert point and not (point & excluded)   # reads image features, only sampled at geometric points


def test_float_nodes_add_ops_without_int8_kernels(tmp_path):
    """A deconvolution on image features is image-only, but ONNX Runtime has no int8 CPU kernel for it: float32."""
    from hpe_bench.deploy.quantize import float_nodes, geometry_nodes
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 2, 2, stride=2))
    path = tmp_path / "deconv.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), str(path), input_names=["image"], opset_version=17, dynamo=False)
    import onnx
    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert geometry_nodes(path) == []
    assert [ops[n] for n in float_nodes(path)] == ["ConvTranspose"]


class _SqueezeExciteThenHead(torch.nn.Module):
    """conv -> squeeze-and-excitation (pool -> linear -> sigmoid -> scales the maps) -> conv -> pool -> head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.excite = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, image):
        f = torch.relu(self.conv1(image))
        f = f * torch.sigmoid(self.excite(f.mean((2, 3)))).view(-1, 4, 1, 1)
        f = torch.relu(self.conv2(f))
        return torch.nn.functional.normalize(self.head(f.mean((2, 3))), dim=1)


def test_pooled_head_stays_float_but_a_pooling_inside_the_trunk_does_not(tmp_path):
    """The last pooling and everything after it (linear head, normalisation) is the head; the excitation's
    pooling feeds a convolution, so it and the trunk after it stay quantisable."""
    from hpe_bench.deploy.quantize import float_nodes, pooled_head_nodes
    path = tmp_path / "se.onnx"
    torch.onnx.export(_SqueezeExciteThenHead(), (torch.rand(1, 3, 8, 8),), str(path), input_names=["image"],
                      opset_version=17, dynamo=False)
    import onnx
    graph = onnx.load(str(path)).graph
    ops = {n.name: n.op_type for n in graph.node}
    head = pooled_head_nodes(path)
    assert set(head) == set(float_nodes(path))  # no geometry input, no deconvolution
    pools = [n.name for n in graph.node if n.op_type == "ReduceMean"]
    assert len(pools) == 2 and pools[0] not in head and pools[1] in head
    assert not any(ops[n] == "Conv" for n in head) and sum(op == "Conv" for op in ops.values()) == 2
    gemms = [n for n, op in ops.items() if op in ("Gemm", "MatMul")]
    assert [g for g in gemms if g in head] == [g for g in gemms if "head" in g] != []
    assert any(g for g in gemms if "excite" in g and g not in head)
    # the quantised graph: both convolutions read int8 weights, the head's Gemm reads float32 ones
    from hpe_bench.deploy.quantize import quantize_int8
    int8 = quantize_int8(path, tmp_path / "se.int8.onnx", [{"image": np.random.default_rng(0).random((1, 3, 8, 8),
                                                                                                   np.float32)}])
    g8 = onnx.load(str(int8)).graph
    producers = {o: n.op_type for n in g8.node for o in n.output}
    inits = {t.name for t in g8.initializer}
    convs = [n for n in g8.node if n.op_type == "Conv"]
    assert len(convs) == 2 and all(producers.get(c.input[1]) == "DequantizeLinear" for c in convs)
    head_gemm = next(n for n in g8.node if n.op_type == "Gemm" and "head" in n.name)
    assert head_gemm.input[1] in inits  # its weight is the float32 initializer itself


def test_calibration_batches_without_rotation_labels_give_no_label_records():
    """Unlabelled calibration/evaluation data (no R) still yields the network inputs; no vs-GT record is kept."""
    from hpe_bench.deploy.quantize import network_input_batches
    from hpe_bench.models.crop import CropInput
    batch = {"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "box": torch.tensor([[4.0, 4, 28, 28]] * 2),
             "has_K": torch.tensor([False, False])}
    labels: list = []
    out = list(network_input_batches(CropInput(size=16), [batch], ["image", "bbox_info"], labels=labels))
    assert len(out) == 1 and out[0]["image"].shape == (2, 3, 16, 16) and labels == []


def test_reduce_range_follows_the_cpu_and_gives_7_bit_weights(tmp_path, monkeypatch):
    """x86 without VNNI -> 7-bit weights (|w| <= 64), with VNNI / AMX-INT8 or on ARM -> full 8-bit; checked on the
    quantised weights themselves."""
    import onnx
    from onnx import numpy_helper

    import hpe_bench.hardware as H
    from hpe_bench.deploy import quantize as Q
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(H, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert Q.needs_reduce_range()
    monkeypatch.setattr(H, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert not Q.needs_reduce_range()
    monkeypatch.setattr(H, "cpu_flags", lambda: {"avx2", "amx_int8"})
    assert not Q.needs_reduce_range()
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr(H, "cpu_flags", lambda: set())
    assert not Q.needs_reduce_range()

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 12, 12),), str(path), input_names=["image"], opset_version=17,
                      dynamo=False)
    calib = [{"image": np.random.default_rng(1).random((1, 3, 12, 12), np.float32)}]
    peaks = {}
    for reduce in (False, True):
        out = Q.quantize_int8(path, tmp_path / f"net_{reduce}.onnx", calib, reduce_range=reduce)
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4]
        assert len(weights) == 2
        peaks[reduce] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert peaks[False] == 127 and peaks[True] <= 64  # per-channel symmetric: the largest weight maps to the top
