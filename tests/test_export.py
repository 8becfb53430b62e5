"""ONNX export (hpe_bench.export, hpe_bench.deploy): ONNX Runtime equals PyTorch within 1e-4 for OpNet
(MobileNetV1, ResNet18) and TRG at batch sizes 1 and 3, checkpoint loading from a run directory, the CLI end
to end, the closed-form linear algebra the exporter adds, and the errors a user meets."""
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

onnxruntime = pytest.importorskip("onnxruntime")

from hpe_bench.deploy.onnx_ops import export_symbolics  # noqa: E402
from hpe_bench.deploy.runtime import make_session, read_sidecar, run_session  # noqa: E402
from hpe_bench.deploy.wrappers import example_inputs, export_spec, net_outputs  # noqa: E402
from hpe_bench.export import build_model, export_onnx, main  # noqa: E402
from hpe_bench.lit_module import HeadPoseModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4

OPNET_CROP = {"_target_": "hpe_bench.models.crop.CropInput", "size": 129, "box_scale": 1.1, "grayscale": True,
              "mean": [0.5], "std": [256 / 255]}
CONFIGS = {
    "opnet_mobilenetv1": {"net": {"_target_": "hpe_bench.models.opnet.OpNet", "backbone": "mobilenetv1"},
                          "crop": OPNET_CROP},
    "opnet_resnet18": {"net": {"_target_": "hpe_bench.models.opnet.OpNet", "backbone": "resnet18"},
                       "crop": OPNET_CROP},
    # TRG at a 64 px crop (maps 4/8/16 instead of 12/24/48): the same graph, 9x fewer pixels.
    "trg": {"net": {"_target_": "hpe_bench.models.trg.TRG", "iterations": 3, "pretrained": False},
            "crop": {"_target_": "hpe_bench.models.crop.CropInput", "size": 64, "box_scale": 1.2}},
    # the demo's network: ray-frame rotation, box-correction translation, landmark head (geometry in the graph)
    "direct_regression_demo": {"net": {"_target_": "hpe_bench.models.direct_regression.DirectRegression",
                                       "backbone": "resnet10t", "rotation_frame": "ray", "translation": "correction",
                                       "landmarks": True},
                               "crop": {"_target_": "hpe_bench.models.crop.CropInput", "size": 64, "box_scale": 1.2}},
}


def randomise_batchnorm(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so an export that used batch statistics
    (train mode) or skipped BN folding correctly would show up."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(m.weight.data * (0.5 + torch.rand(n, generator=gen)))


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    net, crop = build_model(OmegaConf.create({"model": CONFIGS[name]}), name)
    randomise_batchnorm(net, seed)
    return net.eval(), crop


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    net, crop = build(request.param)
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    sidecar = export_onnx(net, crop, path, batch_size=2)
    return request.param, net, crop, path, sidecar


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnxruntime_equals_pytorch(exported, batch_size):
    name, net, crop, path, sidecar = exported
    inputs = example_inputs(crop, export_spec(net).inputs, batch_size=batch_size, seed=10 + batch_size)
    got = run_session(make_session(path, threads=2), inputs)
    ref = net_outputs(net, inputs)
    assert list(got) == [o["name"] for o in sidecar["outputs"]]
    for out in sidecar["outputs"]:
        expected = ref[out["net_key"]].numpy()
        assert got[out["name"]].shape == expected.shape == (batch_size, *out["shape"][1:])
        diff = np.abs(got[out["name"]] - expected).max()
        assert diff <= TOL, f"{name} {out['name']}: max abs diff {diff:.2e}"
    # the export itself checked its example batch the same way
    assert max(sidecar["check"]["max_abs_diff"].values()) <= TOL


def test_exported_names_and_sidecar(exported):
    name, net, crop, path, sidecar = exported
    session = make_session(path)
    names = [i.name for i in session.get_inputs()]
    if name.startswith("opnet"):
        assert names == ["image"]
        assert session.get_inputs()[0].shape[1:] == [1, 129, 129]
        assert {"quat", "coord", "roi", "landmarks", "shape_params", "rot_scale_tril"} <= {
            o.name for o in session.get_outputs()}
        assert set(sidecar["constants"]) == {"roi_scale", "points_scale", "shape_scale"}
        pre = sidecar["preprocessing"]
        assert (pre["crop_size"], pre["channels"], pre["box_scale"]) == (129, 1, 1.1)
        assert pre["mean"] == [0.5] and pre["std"] == pytest.approx([256 / 255])
    elif name.startswith("direct_regression"):
        assert names == ["image", "bbox_info", "box", "K", "A"]
        assert [o.name for o in session.get_outputs()] == ["R", "t", "landmarks_2d"]
    else:
        assert names == ["image", "box", "K", "K_crop", "A", "bbox_info"]
        assert [o.name for o in session.get_outputs()] == ["R", "t", "vertices", "landmarks_2d"]
        assert sidecar["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert session.get_inputs()[0].shape[0] == "N"  # dynamic batch axis
    assert read_sidecar(path) == json.loads(json.dumps(sidecar))
    assert "commit" in sidecar["git"]
    assert not list(path.parent.glob(".*.tmp")), "temporary files left behind"


def test_linalg_export_matches_numpy(tmp_path):
    """The closed-form 3x3 inverse / solve and 2x2 / 3x3 determinant registered for the export."""
    class Linalg(torch.nn.Module):
        def forward(self, x, b):
            return (torch.linalg.inv(x), torch.linalg.solve(x, b.unsqueeze(-1)).squeeze(-1),
                    torch.linalg.det(x), torch.linalg.det(x[..., :2, :2]))

    path = tmp_path / "linalg.onnx"
    names = ["inv", "solve", "det3", "det2"]
    with export_symbolics(17):
        torch.onnx.export(Linalg(), (torch.eye(3).expand(2, 3, 3).contiguous(), torch.ones(2, 3)), str(path),
                          dynamo=False, input_names=["x", "b"], output_names=names,
                          dynamic_axes={n: {0: "N"} for n in ["x", "b", *names]}, opset_version=17)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 3, 3)) + 3 * np.eye(3)).astype(np.float32)  # well conditioned, not affine
    b = rng.normal(size=(5, 3)).astype(np.float32)
    inv, solve, det3, det2 = make_session(path).run(None, {"x": x, "b": b})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(inv, np.linalg.inv(x64), atol=1e-5)
    np.testing.assert_allclose(inv @ x, np.broadcast_to(np.eye(3), x.shape), atol=1e-5)
    np.testing.assert_allclose(solve, np.linalg.solve(x64, b[..., None])[..., 0], atol=1e-5)
    np.testing.assert_allclose(det3, np.linalg.det(x64), rtol=1e-5)
    np.testing.assert_allclose(det2, np.linalg.det(x64[:, :2, :2]), rtol=1e-5)


def save_run_dir(run_dir: Path, name: str, seed: int) -> torch.nn.Module:
    """A run directory in the on-disk format of `python -m hpe_bench`: run_info.json with the resolved config,
    .hydra/config.yaml, and a Lightning checkpoint written by Trainer.save_checkpoint."""
    net, crop = build(name, seed)
    with torch.no_grad():  # weights unlike a fresh init, so a skipped load would be caught
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = {"model": {"_target_": "hpe_bench.lit_module.HeadPoseModule", **CONFIGS[name]}, "seed": seed}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run_dir / "run_info.json").write_text(json.dumps({"seed": seed, "config": cfg}))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", max_steps=0)
    trainer.strategy.connect(HeadPoseModule(net, crop))
    (run_dir / "checkpoints").mkdir()
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return net.eval()


def test_cli_exports_checkpoint_weights(tmp_path):
    run_dir = tmp_path / "runs" / "x" / "2026-01-01_00-00-00"
    trained = save_run_dir(run_dir, "opnet_mobilenetv1", seed=3)
    out = tmp_path / "model.onnx"
    sidecar = main([f"run_dir={run_dir}", f"out={out}", "opset=17"])
    assert sidecar["source"]["ckpt"] == str(run_dir / "checkpoints" / "last.ckpt")
    crop = build_model(OmegaConf.create({"model": CONFIGS["opnet_mobilenetv1"]}), "test")[1]
    inputs = example_inputs(crop, ["image"], batch_size=3, seed=5)
    got = run_session(make_session(out), inputs)
    ref = net_outputs(trained, inputs)
    fresh = net_outputs(build("opnet_mobilenetv1", seed=3)[0], inputs)
    assert np.abs(got["quat"] - ref["quat"].numpy()).max() <= TOL
    assert np.abs(got["quat"] - fresh["quat"].numpy()).max() > 1e-3  # the checkpoint weights were used

    # ckpt= finds the run config next to the checkpoint; outputs= keeps only the named heads
    out2 = tmp_path / "pose_only.onnx"
    main([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out2}", "outputs=quat,coord", "check=false"])
    session = make_session(out2)
    assert [o.name for o in session.get_outputs()] == ["quat", "coord"]
    assert np.abs(session.run(["quat"], {"image": inputs["image"].numpy()})[0] - ref["quat"].numpy()).max() <= TOL


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_info.json"):
        main([f"run_dir={tmp_path}"])
    run_dir = tmp_path / "run"
    save_run_dir(run_dir, "opnet_mobilenetv1", seed=0)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        main([f"run_dir={run_dir}", f"ckpt={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(KeyError, match="available"):
        main([f"run_dir={run_dir}", f"out={tmp_path / 'm.onnx'}", "outputs=quat,no_such_output"])
    with pytest.raises(SystemExit, match="untrained=true"):
        main([f"run_dir={run_dir}", "model.net.backbone=resnet18"])
    # weights of another architecture: the message names the checkpoint
    info = json.loads((run_dir / "run_info.json").read_text())
    info["config"]["model"]["net"]["backbone"] = "resnet18"
    (run_dir / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(RuntimeError, match="last.ckpt"):
        main([f"run_dir={run_dir}", f"out={tmp_path / 'm.onnx'}"])


def test_cli_untrained_from_config_in_subprocess(tmp_path):
    """`python -m hpe_bench.export untrained=true model=...` as a user types it (composes conf/)."""
    out = tmp_path / "direct.onnx"
    proc = subprocess.run([sys.executable, "-m", "hpe_bench.export", "untrained=true", "model=direct_regression",
                           "model.net.backbone=resnet10t", "model.crop.size=64", f"out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["source"]["untrained"] and sidecar["model"] == "direct_regression"
    assert [i["name"] for i in sidecar["inputs"]] == ["image", "bbox_info"]
    assert max(sidecar["check"]["max_abs_diff"].values()) <= TOL


@pytest.mark.slow
def test_cli_exports_a_real_tiny_run(tmp_path):
    """A 2-step `python -m hpe_bench model=opnet` run, then `python -m hpe_bench.export run_dir=...`."""
    from test_run_e2e import run_cli, run_dir

    run_cli(tmp_path, "model=opnet", "model.net.backbone=mobilenetv1", "logger=none", "test=false")
    out_dir = run_dir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "hpe_bench.export", f"run_dir={out_dir}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = out_dir / "export" / "opnet.onnx"
    sidecar = read_sidecar(model)
    assert sidecar["source"]["ckpt"] == str(out_dir / "checkpoints" / "last.ckpt")
    assert sidecar["preprocessing"]["crop_size"] == 64  # the run's model.crop.size override
    assert max(sidecar["check"]["max_abs_diff"].values()) <= TOL
    # the exported weights are the checkpoint's, not a fresh init
    state = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    net, crop = build_model(OmegaConf.create({"model": {"net": sidecar["net_config"],
                                                        "crop": {**OPNET_CROP, "size": 64}}}), "test")
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    inputs = example_inputs(crop, ["image"], batch_size=1, seed=2)
    got = run_session(make_session(model), inputs)
    assert np.abs(got["coord"] - net_outputs(net, inputs)["coord"].numpy()).max() <= TOL


def test_numpy_crop_inputs_match_crop_input():
    """The torch-free preprocessing of docs/deployment.md reproduces CropInput (OpNet and TRG settings)."""
    from hpe_bench.deploy.runtime import crop_inputs
    from hpe_bench.export import preprocessing_spec

    # smooth image: bilinear interpolation differences stay small, so a wrong pixel convention (0.5 px) shows
    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([127 + 120 * np.sin(xx / 9.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1).astype(np.uint8)
    box = np.array([101.3, 52.7, 181.9, 150.2])
    K = np.array([[400.0, 0, 150.0], [0, 410.0, 130.0], [0, 0, 1]])
    for name in ("opnet_mobilenetv1", "trg"):
        crop = build_model(OmegaConf.create({"model": CONFIGS[name]}), name)[1]
        batch = {"image": torch.from_numpy(image).permute(2, 0, 1)[None], "box": torch.tensor(box[None]).float(),
                 "K": torch.tensor(K[None]).float(), "has_K": torch.tensor([True])}
        ref = {k: v.numpy() for k, v in crop(batch).items() if k != "has_K"}
        got = crop_inputs(image, box, preprocessing_spec(crop), K=K)
        for key in ("box", "A", "K", "K_crop", "bbox_info"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-4, err_msg=f"{name} {key}")
        assert got["image"].shape == ref["image"].shape
        # measured ~1e-6; the crop shifted by half a pixel differs by ~1e-2
        assert np.abs(got["image"] - ref["image"]).max() < 1e-3, name
