"""Importing the authors' released checkpoints (issue 10 item 3), against ``shared/reference/checkpoints``.

Each fixture is the authors' state_dict layout (manifest: keys, shapes, a seeded fill rule with per-entry sha256)
plus the authors' own outputs for those weights and the tensors their preprocessing made from a raw image and
box (``*_io.npz``). The weights are rebuilt here by the stated rule, saved as the authors save them, imported,
and hpe_bench's network must give the authors' outputs; hpe_bench's crop (with the ``*_code`` conventions) must
rebuild the authors' input tensors. Every expected value comes from the fixtures, none from the code under test.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.assets import arkit_face, bfm68
from hpe_bench.importers import CheckpointImportError, import_checkpoint, importer, load_state_dict_file
from hpe_bench.import_checkpoint import main as import_main
from hpe_bench.models.crop import CropInput

ROOT = Path(__file__).resolve().parents[1]
REF = Path(os.environ.get("HPE_BENCH_SHARED", ROOT.parent / "shared")) / "reference" / "checkpoints"
TOL = 1e-5
OPNET_OUTPUTS = {  # hpe_bench OpNet output -> the authors' name
    "roi": "roi", "coord": "coord", "quat": "pose", "quat_raw": "unnormalized_quat",
    "rot_scale_tril": "pose_scales_tril", "coord_scale_tril": "coord_scales", "landmarks_crop": "pt3d_68",
    "shape_params": "shapeparam",
}
OPNET_CROP = dict(size=129, box_scale=1.1, grayscale=True, mean=[0.5], std=[256 / 255], mapping="pixel_edge",
                  resize="opnet_code", quantize=True)  # conf/model/opnet_code.yaml
TRG_CROP = dict(size=192, box_scale=1.0, mapping="trg_code", bbox_reference="image_centre", quantize=True)


def reference(name: str):
    manifest, io = REF / f"{name}_manifest.json", REF / f"{name}_io.npz"
    if not (manifest.is_file() and io.is_file()):
        pytest.skip(f"checkpoint fixtures not found at {REF} (set HPE_BENCH_SHARED)")
    return json.loads(manifest.read_text()), dict(np.load(io))


def constant(entry: dict) -> torch.Tensor:
    """A ``constant`` entry: inline, or the hpe_bench asset its ``source`` names (checked by sha256 below)."""
    fill, key = entry["fill"], entry["key"]
    if "value" in fill:
        return torch.tensor(fill["value"], dtype=torch.float32).reshape(entry["shape"])
    if key.endswith("keyeigvecs"):
        return torch.as_tensor(bfm68()["basis"], dtype=torch.float32).permute(2, 0, 1).contiguous()
    if key.endswith("keypts"):
        return torch.as_tensor(bfm68()["mean"], dtype=torch.float32)
    if key.endswith("init_face"):
        return torch.as_tensor(arkit_face()["mean_vertices"], dtype=torch.float32)[None]
    raise KeyError(key)


def authors_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    """The manifest's fill rule, entry by entry, each checked against its sha256."""
    sd = {}
    for e in manifest["entries"]:
        f, shape = e["fill"], tuple(e["shape"])
        if f["kind"] in ("normal", "uniform"):
            g = torch.Generator().manual_seed(1000 + e["index"])
            draw = torch.randn if f["kind"] == "normal" else torch.rand
            x = draw(shape, generator=g, dtype=torch.float32) * f["scale"] + f["offset"]
        elif f["kind"] == "zeros":
            x = torch.zeros(shape, dtype=torch.int64)
        else:
            x = constant(e)
        assert hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest() == e["sha256"], e["key"]
        sd[e["key"]] = x
    return sd


@pytest.fixture(scope="module", params=["opnet_mobilenetv1", "opnet_resnet18"])
def opnet_file(request, tmp_path_factory):
    manifest, io = reference(request.param)
    path = tmp_path_factory.mktemp("authors") / f"best_total_NetworkWithPointHead_{request.param[6:]}.ckpt"
    torch.save(authors_state_dict(manifest), path)  # what the authors' training writes: a bare state_dict
    return request.param, path, io


def imported_net(ckpt: Path, fmt: str, **variant) -> torch.nn.Module:
    """Load an imported checkpoint's ``net.*`` weights strictly into a fresh hpe_bench network."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net = importer(fmt).build_net(variant)
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")}, strict=True)
    return net.eval()


# -- OpNet -----------------------------------------------------------------------------------------------------
def test_opnet_import_reproduces_the_authors_outputs(opnet_file, tmp_path):
    name, src, io = opnet_file
    out = tmp_path / "imported.ckpt"
    meta = import_checkpoint(src, out)
    backbone = name.split("_", 1)[1]
    assert meta["format"] == "opnet" and meta["variant"] == {"backbone": backbone}
    assert meta["dropped_buffers"]["landmarks.deformablekeypoints.keypts"]["max_abs_diff_to_asset"] == 0.0
    net = imported_net(out, "opnet", backbone=backbone)
    with torch.no_grad():
        pred = net({"image": torch.from_numpy(io["input"])})
    for ours, theirs in OPNET_OUTPUTS.items():
        np.testing.assert_allclose(pred[ours].numpy(), io[theirs], atol=TOL, rtol=0, err_msg=ours)
    # input-independent scales, broadcast over the batch (and over xyz for the points) by the authors
    for ours, theirs in (("roi_scale", "roi_scales"), ("shape_scale", "shapeparam_scales")):
        np.testing.assert_allclose(np.broadcast_to(pred[ours].numpy(), io[theirs].shape), io[theirs], atol=TOL)
    np.testing.assert_allclose(np.broadcast_to(pred["points_scale"].numpy()[:, None], io["pt3d_68_scales"].shape[1:]),
                               io["pt3d_68_scales"][0], atol=TOL)


def opnet_batch(io: dict) -> dict:
    """The fixture's grey image (as RGB, R = G = B) and face ROI (pixel-edge -> hpe_bench pixel-centre)."""
    img = torch.from_numpy(io["raw_image"])[None, None].expand(2, 3, -1, -1).contiguous()
    return {"image": img, "box": torch.from_numpy(io["face_roi"]) - 0.5, "K": torch.eye(3).expand(2, 3, 3),
            "has_K": torch.zeros(2, dtype=torch.bool)}


def test_opnet_code_crop_rebuilds_the_authors_input():
    _, io = reference("opnet_mobilenetv1")
    inputs = CropInput(**OPNET_CROP)(opnet_batch(io))
    # the window the authors cut (sample 1 reaches past the image: zero padding, INTER_LINEAR upscaling)
    np.testing.assert_array_equal(inputs["box"].numpy() + 0.5, io["view_roi"])
    np.testing.assert_allclose(inputs["image"].numpy(), io["input"], atol=TOL, rtol=0)
    # hpe_bench's default crop differs by design (bilinear warp of the exact box): what the switches are for
    default = CropInput(size=129, box_scale=1.1, grayscale=True, mean=[0.5], std=[256 / 255])(opnet_batch(io))
    assert np.abs(default["image"].numpy() - io["input"]).max() > 0.05


def test_opnet_code_frame_maps_outputs_like_the_authors_predict(opnet_file):
    """Network coordinates -> full image through CropInput's A: the authors' predict() (pixel-edge px)."""
    name, src, io = opnet_file
    net = importer("opnet").build_net({"backbone": name.split("_", 1)[1]})
    state, _ = importer("opnet").convert(load_state_dict_file(src), str(src))
    net.load_state_dict(state)
    inputs = CropInput(**OPNET_CROP)(opnet_batch(io))
    with torch.no_grad():
        pred = net.eval()({"image": torch.from_numpy(io["input"])})
    A, S = inputs["A"].double(), 129
    to_full = lambda xy: G.apply_transform_2d(torch.linalg.inv(A), G.normalized_to_crop(xy.double(), S))  # noqa: E731
    xy = to_full(pred["coord"][:, None, :2])[:, 0]
    np.testing.assert_allclose(xy.numpy() + 0.5, io["predict.coord"][:, :2], atol=2e-3)
    size_px = pred["coord"][:, 2].double() / (G.similarity_scale(A) * 2.0 / (S - 1))
    np.testing.assert_allclose(size_px.numpy(), io["predict.coord"][:, 2], rtol=TOL)
    lm = to_full(pred["landmarks_crop"][..., :2])
    np.testing.assert_allclose(lm.numpy() + 0.5, io["predict.pt3d_68"][..., :2], atol=2e-3)


# -- TRG -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trg_state():
    manifest, io = reference("trg")
    authors = authors_state_dict(manifest)
    state, report = importer("trg").convert(authors, "trg fixture")
    return authors, state, report, io


def trg_inputs(io: dict) -> dict:
    """The authors' forward arguments in hpe_bench's names: their crop tensor, box, K and crop intrinsics."""
    box, K = torch.from_numpy(io["box"]).float(), torch.from_numpy(io["K"]).expand(2, 3, 3)
    A = G.crop_transform(box, 192)
    size = torch.tensor([[480.0, 360.0]]).expand(2, 2)
    return {"image": torch.from_numpy(io["input.x"]), "box": box, "K": K, "A": A, "K_crop": A @ K,
            "image_size": size, "bbox_info": G.box_features_reference(box, K, "image_centre", size)}


@pytest.mark.parametrize("divisor,prefix", [("size", ""), ("size_minus_one", "aligned191.")])
def test_trg_import_reproduces_the_authors_outputs(trg_state, divisor, prefix):
    """``sampler_divisor="size"`` is the authors' network (/192); ``size_minus_one`` their /191 variant."""
    _, state, report, io = trg_state
    assert report["dropped_buffers"]["regressor.0.init_head_pose"]["max_abs_diff_to_asset"] < 1e-6
    net = importer("trg").build_net({"principal": "image_centre", "sampler_divisor": divisor,
                                     "heatmap_cells": "trg_code"})
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        pred = net.eval()(trg_inputs(io))
    for i in range(3):
        key = f"{prefix if i else ''}output.{i + 1}"
        R_t = torch.from_numpy(io[f"{key}.pred_R_t"])  # [[R, t], [0, 1]] transposed
        c = io[f"{key}.pred_cor_param"] * np.array([1.0, 0.5, 0.5])  # hpe_bench's dx, dy: the code's halved
        np.testing.assert_allclose(pred["R_iters"][i].numpy(), R_t.transpose(1, 2)[:, :3, :3].numpy(), atol=TOL)
        np.testing.assert_allclose(pred["t_iters"][i].numpy(), R_t[:, 3, :3].numpy(), atol=TOL)
        np.testing.assert_allclose(pred["translation_params_iters"][i].numpy(), c, atol=TOL)
        np.testing.assert_allclose(pred["vertices_iters"][i].numpy(), io[f"{key}.pred_face_world"], atol=TOL)
        cam = G.transform_points(pred["vertices_iters"][i], pred["R_iters"][i], pred["t_iters"][i])
        np.testing.assert_allclose(cam.numpy(), io[f"{key}.pred_face_cam"], atol=TOL)
    for i, key in ((1, "samp_pt.0"), (2, f"{prefix}samp_pt.1")):
        points = G.normalize_sampling_points(torch.from_numpy(io[key]), 192, divisor)  # authors' crop px
        np.testing.assert_allclose(pred["sampling_points_iters"][i].numpy(), points.numpy(), atol=TOL)
    px = (torch.from_numpy(io["pred_lmk68.0"]) + 1.0) * 96.0  # the code's normalisation p / 192 * 2 - 1
    np.testing.assert_allclose(pred["heatmap_landmarks"].numpy(), G.crop_to_normalized(px, 192).numpy(), atol=TOL)


def test_trg_code_crop_rebuilds_the_authors_inputs():
    _, io = reference("trg")
    batch = {"image": torch.from_numpy(io["raw_image"]).permute(2, 0, 1)[None].expand(2, -1, -1, -1),
             "box": torch.from_numpy(io["box"]).float(), "K": torch.from_numpy(io["K"]).expand(2, 3, 3),
             "has_K": torch.ones(2, dtype=torch.bool)}
    inputs = CropInput(**TRG_CROP)(batch)
    K_img = torch.from_numpy(io["input.K_img"])[:, :3].transpose(1, 2)  # the code's transposed layout
    np.testing.assert_allclose(inputs["K_crop"].numpy(), K_img.numpy(), rtol=TOL, atol=TOL)
    l, t, r, b, f, H, W = torch.from_numpy(io["input.bbox_info"]).double().unbind(-1)
    i_bbox = torch.stack([((l + r) / 2 - W / 2) / f * 4, ((t + b) / 2 - H / 2) / f * 4, (r - l) / f], -1)
    np.testing.assert_allclose((inputs["bbox_info"].double() * torch.tensor([4.0, 4.0, 1.0])).numpy(),
                               i_bbox.numpy(), atol=1e-6)
    # the image: OpenCV's warpAffine (in the authors' build) vs a float warp rounded to uint8 levels; builds of
    # OpenCV differ in the last bit (README), so: one level at most anywhere, equal to 1e-5 nearly everywhere
    diff = np.abs(inputs["image"].numpy() - io["input.x"])
    one_level = 1.0 / 255.0 / 0.224 + 1e-5
    assert diff.max() <= one_level
    assert (diff <= TOL).mean() > 0.9999
    default = CropInput(size=192, box_scale=1.0)(batch)
    assert np.abs(default["image"].numpy() - io["input.x"]).max() > 0.5  # the 192 / b warp differs by design


# -- conventions (hand-derived values) ---------------------------------------------------------------------------
def test_reference_code_conventions_known_values():
    R = G.axis_rotation("z", torch.tensor(0.3)) @ G.axis_rotation("x", torch.tensor(-0.2))
    row_major = R[:, :2].reshape(6)  # (R00, R01, R10, R11, R20, R21)
    np.testing.assert_array_equal(G.sixd_from_row_major(row_major).numpy(), G.matrix_to_sixd(R).numpy())
    np.testing.assert_array_equal(G.sixd_to_row_major(G.matrix_to_sixd(R)).numpy(), row_major.numpy())
    perm = G.grid_order_permutation(18)  # ours y-major (x = lin[i % 18]), theirs x-major (x = lin[k // 18])
    assert perm[1].item() == 18 and perm[18].item() == 1 and perm[323].item() == 323
    p = torch.tensor([[0.0, 191.0], [192.0, 96.0]], dtype=torch.float64)
    np.testing.assert_allclose(G.normalize_sampling_points(p, 192, "size").numpy(), [[-1, 191 / 96 - 1], [1, 0]])
    np.testing.assert_allclose(G.normalize_sampling_points(p, 192).numpy(), [[-1, 1], [192 / 95.5 - 1, 96 / 95.5 - 1]])
    cells = G.heatmap_cell_positions(48, 192, "trg_code", torch.float64)
    assert cells[0].item() == -1.0 and abs(cells[47].item() - (188 * 2 / 191 - 1)) < 1e-12
    box, K = torch.tensor([[100.0, 50.0, 300.0, 250.0]]), torch.tensor([[[500.0, 0, 330], [0, 500.0, 240], [0, 0, 1]]])
    np.testing.assert_allclose(G.box_features_reference(box, K, "image_centre", torch.tensor([[640.0, 480.0]])).numpy(),
                               [[(200 - 320) / 500, (150 - 240) / 500, 200 / 500]], rtol=1e-6)


# -- bad files and the command line -----------------------------------------------------------------------------
def mobilenet_state() -> dict:
    manifest, _ = reference("opnet_mobilenetv1")
    return authors_state_dict(manifest)


def test_wrong_or_truncated_files_name_the_keys(tmp_path):
    sd = mobilenet_state()
    cases = {
        "missing": {k: v for k, v in sd.items() if not k.startswith("quatnet.")},
        "misshapen": {**sd, "posnet.linear_xy.weight": torch.zeros(3, 1024)},
        "blurpool": {**sd, "convnet.dw2_2.conv_dw.0.kernel": torch.ones(1, 1, 3, 3)},
        "dataparallel": {f"module.{k}": v for k, v in sd.items()},
    }
    for case, state in cases.items():
        torch.save(state, tmp_path / f"{case}.ckpt")
    out = tmp_path / "out.ckpt"
    with pytest.raises(CheckpointImportError, match=r"8 missing key\(s\): quatnet.linear.bias, quatnet.linear.weight"):
        import_checkpoint(tmp_path / "missing.ckpt", out)
    with pytest.raises(CheckpointImportError, match=r"posnet.linear_xy.weight \(3, 1024\) \(expected \(2, 1024\)\)"):
        import_checkpoint(tmp_path / "misshapen.ckpt", out)
    with pytest.raises(CheckpointImportError, match="BlurPool"):
        import_checkpoint(tmp_path / "blurpool.ckpt", out)
    assert not out.exists()
    assert import_checkpoint(tmp_path / "dataparallel.ckpt", out)["variant"] == {"backbone": "mobilenetv1"}
    trg_like = {"feature_extractor.conv1.weight": torch.zeros(64, 3, 7, 7), "regressor.0.fc1.bias": torch.zeros(1024)}
    torch.save(trg_like, tmp_path / "trg_partial.bin")
    with pytest.raises(CheckpointImportError, match=r"TRG-Release.*missing key\(s\).*deconv_layers"):
        import_checkpoint(tmp_path / "trg_partial.bin", tmp_path / "trg.ckpt")


def test_cli_success_and_clear_errors(tmp_path, capsys):
    src = tmp_path / "swa_NetworkWithPointHead_mobilenetv1.ckpt"
    torch.save(mobilenet_state(), src)
    out = tmp_path / "imported" / "opnet_bl.ckpt"
    assert import_main([str(src), str(out)]) == 0
    assert "model=opnet_code" in capsys.readouterr().out
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["hpe_bench_import"]["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert {"mean_R_sum", "mean_t_sum", "mean_counts"} <= set(ckpt["state_dict"])

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    bad_out = tmp_path / "never.ckpt"
    assert import_main([str(truncated), str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert "truncated.ckpt is not a readable torch checkpoint" in err and "Traceback" not in err
    assert not bad_out.exists() and not list(tmp_path.glob(".never.ckpt.*"))
    assert import_main([str(out), str(bad_out)]) == 2  # an hpe_bench checkpoint is not an authors' file
    assert "already a Lightning" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exit_status_and_imported_checkpoint_tests(tmp_path):
    """The real entry points: a wrong file -> one line and status 2; an imported file -> ``train=false`` runs."""
    wrong = tmp_path / "state_dict.bin"
    torch.save({"feature_extractor.conv1.weight": torch.zeros(1), "regressor.0.fc1.bias": torch.zeros(1024)}, wrong)
    proc = subprocess.run([sys.executable, "-m", "hpe_bench", "import-checkpoint", str(wrong), str(tmp_path / "x.ckpt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing key(s)" in proc.stderr and "feature_extractor.conv1.weight" in proc.stderr

    src, out = tmp_path / "opnet.ckpt", tmp_path / "opnet_bl.ckpt"
    torch.save(mobilenet_state(), src)
    import_checkpoint(src, out)
    cmd = [sys.executable, "-m", "hpe_bench", "debug=default", "model=opnet_code", "data=synthetic", "train=false",
           f"ckpt_path={out}", f"paths.output_dir={tmp_path / 'runs'}", "logger=none"]
    env = {**os.environ, "HPE_BENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["num_samples"] == 20 and metrics["model"] == "opnet_code"
