"""Transposed convolutions as sub-pixel convolutions (hpe_bench.deploy.subpixel), checked against torch's own
ConvTranspose2d, and the int8 export path that uses them (TRG: no ConvTranspose left to keep in float32)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from hpe_bench.deploy.subpixel import SubPixelConv, can_rewrite, subpixel_deconvs

# (C_in, C_out, kernel, stride, padding, output_padding): every one has output = stride x input
SHAPES = [(4, 3, 4, 2, 1, 0),  # TRG's / SimpleBaseline's deconvolution
          (3, 5, 2, 2, 0, 0), (2, 3, 3, 2, 1, 1), (3, 2, 3, 3, 0, 0), (2, 2, 5, 2, 2, 1), (2, 3, 6, 2, 2, 0),
          (3, 3, 3, 1, 1, 0)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"k{s[2]}s{s[3]}p{s[4]}op{s[5]}" for s in SHAPES])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_conv_transpose(shape, bias):
    ci, co, k, s, p, op = shape
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(ci, co, k, stride=s, padding=p, output_padding=op, bias=bias).eval()
    x = torch.randn(2, ci, 5, 7)
    expected = deconv(x)
    got = SubPixelConv(deconv)(x)
    assert got.shape == expected.shape == (2, co, 5 * s, 7 * s)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_folds_the_following_batchnorm():
    torch.manual_seed(1)
    block = nn.Sequential(nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    bn = block[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    block.eval()
    x = torch.randn(3, 6, 6, 5)
    rewritten, count = subpixel_deconvs(block)
    assert count == 1
    assert [type(m).__name__ for m in rewritten] == ["SubPixelConv", "Identity", "ReLU"]
    assert isinstance(block[0], nn.ConvTranspose2d) and isinstance(block[1], nn.BatchNorm2d)  # original untouched
    torch.testing.assert_close(rewritten(x), block(x), atol=1e-5, rtol=1e-5)


def test_layers_without_an_exact_form_are_left_alone():
    assert not can_rewrite(nn.ConvTranspose2d(2, 2, 3, stride=2, padding=0))  # output 2H + 1, not 2H
    assert not can_rewrite(nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, groups=2))
    assert not can_rewrite(nn.ConvTranspose2d(2, 2, 4, stride=(2, 1), padding=(1, 1)))
    with pytest.raises(ValueError, match="no exact sub-pixel form"):
        SubPixelConv(nn.ConvTranspose2d(2, 2, 3, stride=2))
    net = nn.Sequential(nn.ConvTranspose2d(2, 2, 3, stride=2), nn.BatchNorm2d(2))
    rewritten, count = subpixel_deconvs(net)
    assert count == 0 and isinstance(rewritten[0], nn.ConvTranspose2d)


def test_trg_network_is_unchanged_by_the_rewrite():
    """TRG's three deconvolution stages (k4 s2 p1 + BN) rewritten: every output equal to the original net's."""
    from test_export import build

    from hpe_bench.deploy.wrappers import example_inputs, export_spec, net_outputs
    net, crop = build("trg", seed=3)
    rewritten, count = subpixel_deconvs(net)
    assert count == 3
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in rewritten.modules())
    inputs = example_inputs(crop, export_spec(net).inputs, batch_size=2, seed=4)
    expected, got = net_outputs(net, inputs), net_outputs(rewritten, inputs)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4, msg=key)


def test_int8_export_of_trg_quantises_the_deconvolutions(tmp_path):
    """`python -m hpe_bench.export ... int8=true` for TRG: the int8 graph has no ConvTranspose (its convolutions
    are int8: QLinear-able Conv between QuantizeLinear/DequantizeLinear), the sidecar says what was rewritten,
    and int8 stays close to float32 on the synthetic test batch."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from hpe_bench.export import main

    out = tmp_path / "trg.onnx"
    main(["untrained=true", "model=trg", "model.net.pretrained=false", "model.crop.size=64", f"out={out}",
          "int8=true", "calib_batches=1", "eval_batches=1"])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    record = sidecar["int8"]
    assert record["graph_rewrites"] and record["graph_rewrites"][0].startswith("3 ConvTranspose2d")
    fp32_ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    int8_graph = onnx.load(str(tmp_path / record["file"])).graph
    int8_ops = [n.op_type for n in int8_graph.node]
    assert fp32_ops.count("ConvTranspose") == 3  # the float32 model is the network as trained
    assert "ConvTranspose" not in int8_ops and int8_ops.count("DepthToSpace") == 3
    assert int8_ops.count("Conv") == fp32_ops.count("Conv") + 3
    # each deconvolution's convolution reads a dequantised int8 weight
    producers = {o: n for n in int8_graph.node for o in n.output}
    d2s_convs = [producers[n.input[0]] for n in int8_graph.node if n.op_type == "DepthToSpace"]
    d2s_convs = [producers[c.input[0]] if c.op_type == "DequantizeLinear" else c for c in d2s_convs]
    d2s_convs = [producers[c.input[0]] if c.op_type == "QuantizeLinear" else c for c in d2s_convs]
    assert all(c.op_type == "Conv" and producers[c.input[1]].op_type == "DequantizeLinear" for c in d2s_convs)
    change = record["int8_vs_fp32"]
    assert change["num_samples"] == 16 and np.isfinite(change["geodesic_deg"]) and change["geodesic_deg"] < 5.0
