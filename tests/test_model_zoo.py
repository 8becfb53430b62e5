"""Every registered model (``hpe_bench.models.list_models()``, so a new one is covered without editing this
file): it has its ``conf/model/<name>.yaml``, builds from it, runs forward, says what it exports and exports
to ONNX matching PyTorch, and a tiny ``python -m hpe_bench model=<name> debug=default`` run writes its outputs,
with translation metrics left out for a model that predicts rotation only."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

pytest.importorskip("onnxruntime")

import hpe_bench  # noqa: E402,F401  (registers the config resolvers)
from hpe_bench import geometry as G  # noqa: E402
from hpe_bench.deploy.wrappers import example_inputs, export_spec, net_outputs  # noqa: E402
from hpe_bench.export import build_model, export_onnx  # noqa: E402
from hpe_bench.models import list_models, model_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODELS = list_models()
TOL = 1e-4  # |onnxruntime - torch| on the example batch (as tests/test_export.py)
SMALL = ["model.crop.size=64"]  # each model keeps its own trunk: the zoo tests what the YAML builds


def compose_model(name: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=[f"model={name}", *SMALL, *overrides])


def crop_batch(crop) -> dict:
    """CropInput's output for two boxes in random 320 x 240 images with intrinsics (f = 300 px)."""
    gen = torch.Generator().manual_seed(0)
    K = torch.tensor([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]]).expand(2, 3, 3)
    batch = {"image": torch.rand(2, 3, 240, 320, generator=gen), "K": K, "has_K": torch.ones(2, dtype=torch.bool),
             "box": torch.tensor([[60.0, 40, 180, 160], [150, 70, 250, 200]])}
    with torch.no_grad():
        return dict(crop(batch))


def test_the_rotation_only_model_is_registered():
    assert {"direct_regression", "opnet", "sixdrepnet", "trg"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_runs_and_exports(name, tmp_path):
    assert (CONF / "model" / f"{name}.yaml").is_file(), f"registered model {name} has no conf/model/{name}.yaml"
    torch.manual_seed(0)
    net, crop = build_model(compose_model(name), f"conf/model/{name}.yaml")
    assert model_name(net) == name
    spec = export_spec(net)
    assert spec.kind == name and spec.in_chans == crop.channels and spec.outputs
    # forward on everything CropInput makes of a batch: the keys the spec promises are there, rotations are rotations
    pred = net_outputs(net, crop_batch(crop))
    for onnx_name, (key, description) in spec.outputs.items():
        assert key in pred and description, (name, onnx_name)
    for key in ("R", "R_crop"):
        if key in pred:
            R = pred[key].double()
            torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R),
                                       atol=1e-5, rtol=0)
            assert torch.det(R).sub(1).abs().max() < 1e-5
    sidecar = export_onnx(net, crop, tmp_path / f"{name}.onnx", check=True)
    assert sidecar["model"] == name and sidecar["preprocessing"]["channels"] == spec.in_chans
    assert [i["name"] for i in sidecar["inputs"]] == list(spec.inputs)
    assert max(sidecar["check"]["max_abs_diff"].values()) <= TOL


def test_rotation_only_model_exports_rotation_only(tmp_path):
    net, crop = build_model(compose_model("sixdrepnet", "model.net.backbone=resnet10t"), "conf/model/sixdrepnet.yaml")
    spec = export_spec(net)
    assert spec.inputs == ("image",) and list(spec.outputs) == ["R"]
    pred = net_outputs(net, example_inputs(crop, ["image"]))
    assert set(pred) == {"R"}


def test_geodesic_loss_is_the_rotation_angle():
    from hpe_bench.losses.geodesic import GeodesicLoss
    angles = torch.tensor([0.1, 0.5, 2.0, 3.0])
    R_true = G.axis_rotation("y", torch.zeros(4))
    R_pred = G.axis_rotation("y", angles)  # known angles about one axis
    has = torch.tensor([True, True, True, False])
    terms = GeodesicLoss(rot=2.0)({"R": R_pred}, {"R": R_true, "has_R": has}, {})
    assert terms["loss"].item() == pytest.approx(2.0 * (0.1 + 0.5 + 2.0) / 3, rel=1e-5)
    # gradient reaches the 6D head through Gram-Schmidt
    x = G.matrix_to_sixd(R_pred[:1]).clone().requires_grad_(True)
    GeodesicLoss()({"R": G.sixd_to_matrix(x)}, {"R": R_true[:1], "has_R": has[:1]}, {})["loss"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_tiny_cli_run_writes_outputs(name, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "hpe_bench", f"model={name}", "debug=default", "logger=none", *SMALL,
           "data.train.num_samples=16", "data.val.num_samples=4", "data.test.num_samples=6",
           "callbacks.prediction_images.num_images=2", f"paths.output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = (tmp_path / "out" / "runs" / "default").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    df = pd.read_parquet(run / "predictions.parquet")
    assert metrics["model"] == name and metrics["num_samples"] == 6 and len(df) == 6
    assert metrics["count_rotation"] == 6 and math.isfinite(metrics["geodesic_deg"])
    if df[["pred_t_x", "pred_t_y", "pred_t_z"]].isna().all().all():  # a rotation-only model
        assert metrics.get("count_translation", 0) == 0
        for key in ("tx_mm", "ty_mm", "tz_mm", "mae_t_mm", "add_mm"):
            assert key not in metrics, key
    else:
        assert metrics["count_translation"] == 6 and math.isfinite(metrics["mae_t_mm"])
    if name == "sixdrepnet":
        assert df["pred_t_z"].isna().all() and np.isfinite(df["pred_R_00"]).all()
