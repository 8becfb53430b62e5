"""OpNet network (hpe_bench/models/opnet.py): shapes, head maps, parameter counts, landmark posing vs real labels."""
from pathlib import Path

import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.models import create_model, list_models
from hpe_bench.models.opnet import lower_triangular_from_features, pose_landmarks, smoothclip

AFLW2K_MINI = Path(__file__).resolve().parents[2] / "shared" / "assets" / "aflw2kmini.h5"
LANDMARK_KEYS = {"shape_params", "landmarks_crop", "points_scale", "shape_scale"}


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return create_model("opnet", backbone="mobilenetv1")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_model("opnet", backbone="resnet18")


def _image(b=3, seed=0):
    return {"image": torch.rand(b, 1, 129, 129, generator=torch.Generator().manual_seed(seed)) - 0.5}


@pytest.fixture(scope="module")
def train_out(mobilenet):
    """One train-mode forward with autograd, shared by most tests to save CPU time; hooks record the MobileNet feature-map sizes."""
    mobilenet.train()
    mobilenet.zero_grad()
    maps = []  # (channels, size) after the stem and each block, recorded by hooks
    backbone = mobilenet.backbone
    hooks = [m.register_forward_hook(lambda _m, _i, y: maps.append((y.shape[1], y.shape[-1])))
             for m in [backbone.stem, *backbone.blocks]]
    out = mobilenet(_image(2))
    for h in hooks:
        h.remove()
    out["_feature_maps"] = maps
    return out


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registered():
    assert "opnet" in list_models()


def test_smoothclip_reference_values():
    got = smoothclip(torch.tensor([-2.0, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([0.135335, 1.0, 1.5], dtype=torch.float64), atol=1e-6, rtol=0)


def test_output_shapes_and_quaternion(train_out):
    out = {k: v.detach() for k, v in train_out.items() if not k.startswith("_") and k != "per_sample"}
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "quat": (2, 4), "quat_raw": (2, 4), "R_crop": (2, 3, 3), "coord": (2, 3), "roi": (2, 4), "shape_params": (2, 50),
        "landmarks_crop": (2, 68, 3), "rot_scale_tril": (2, 3, 3), "coord_scale_tril": (2, 3, 3),
        "roi_scale": (4,), "points_scale": (68,), "shape_scale": (50,),
    }
    q = out["quat"]
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    assert (q[:, 3] > 0).all()
    torch.testing.assert_close(out["quat_raw"] / out["quat_raw"].norm(dim=-1, keepdim=True), q)
    torch.testing.assert_close(out["R_crop"], G.quat_to_matrix(q))
    assert (out["coord"][:, 2] > 0).all()
    roi = out["roi"]
    assert (roi[:, 2:] > roi[:, :2]).all()
    for key in ("roi_scale", "points_scale", "shape_scale"):
        torch.testing.assert_close(out[key], torch.full_like(out[key], 1.01))  # h = 1 at init


def test_landmarks_consistent_with_pose(train_out):
    out = {k: v.detach() for k, v in train_out.items() if not k.startswith("_") and k != "per_sample"}
    expected = pose_landmarks(out["quat"], out["coord"], out["shape_params"])
    torch.testing.assert_close(out["landmarks_crop"], expected, atol=1e-5, rtol=1e-5)


def test_initial_biases(mobilenet):
    assert mobilenet.quat_head.bias[3].item() == pytest.approx(np.log(0.1))
    assert mobilenet.size_head.bias.item() == pytest.approx(0.5)
    assert mobilenet.box_head.bias.tolist() == pytest.approx([0, 0, 0.5, 0.5])
    assert mobilenet.rot_unc.bn.weight.tolist() == pytest.approx([1e-4] * 6)
    assert mobilenet.rot_unc.bn.bias.tolist() == [1, 1, 1, 0, 0, 0]
    assert mobilenet.rot_unc.linear.bias is None


def test_parameter_counts(mobilenet, resnet):
    # opnet.md: 3.28 M (MobileNet) and 11.2 M (ResNet18) in the whole model; we get 3,281,871 / 11,207,823.
    for model, expected in ((mobilenet, 3.28e6), (resnet, 11.2e6)):
        n = _n_params(model)
        assert abs(n - expected) / expected < 0.01, n


def test_mobilenet_feature_maps(mobilenet, train_out):
    maps = train_out["_feature_maps"]
    assert len(maps) == 14 and maps[0] == (32, 65) and maps[-1] == (1024, 5)
    assert sorted({size for _, size in maps}, reverse=True) == [65, 33, 17, 9, 5]
    assert mobilenet.backbone.num_features == 1024
    assert sum(b.residual for b in mobilenet.backbone.blocks) == 8  # 128, 256, 512 x5, 1024 identity blocks


def test_resnet18_backbone(resnet):
    model = resnet
    conv1 = model.backbone.conv1
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride) == (1, 64, (7, 7), (2, 2))
    assert model.backbone.num_features == 512
    model.eval()
    with torch.no_grad():
        assert model(_image(2))["landmarks_crop"].shape == (2, 68, 3)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="backbone"):
        create_model("opnet", backbone="vgg")


def test_scale_tril_lower_triangular_positive_diagonal(train_out):
    torch.manual_seed(1)
    z = torch.randn(64, 6) * 3  # plenty of negative diagonal entries before the sign flip
    L = lower_triangular_from_features(z)
    assert torch.equal(L.triu(1), torch.zeros_like(L))
    assert (torch.diagonal(L, dim1=-2, dim2=-1) >= 0.01).all()
    # Sign flips of columns leave Sigma = L L^T unchanged (up to the + 0.01 I).
    raw = lower_triangular_from_features(z, eps=0.0)
    Lz = torch.zeros(64, 3, 3)
    Lz[:, [0, 1, 2, 1, 2, 2], [0, 1, 2, 0, 0, 1]] = z
    torch.testing.assert_close(raw @ raw.mT, Lz @ Lz.mT)

    for key in ("rot_scale_tril", "coord_scale_tril"):
        L = train_out[key].detach()
        assert torch.equal(L.triu(1), torch.zeros_like(L))
        assert (torch.diagonal(L, dim1=-2, dim2=-1) > 0).all()


def test_no_landmarks_variant():
    torch.manual_seed(0)
    model = create_model("opnet", backbone="mobilenetv1", landmarks=False).eval()
    assert not hasattr(model, "shape_head")
    with torch.no_grad():
        out = model(_image(2))
    assert LANDMARK_KEYS.isdisjoint(out)
    assert {"quat", "R_crop", "coord", "roi", "rot_scale_tril", "coord_scale_tril", "roi_scale"} <= set(out)


def test_dropout_option():
    model = create_model("opnet", dropout=0.1, landmarks=False)
    assert model.dropout.p == 0.1


def test_gradients_reach_backbone(mobilenet, train_out):
    loss = sum(v.square().mean() for k, v in train_out.items() if not k.startswith("_") and k != "per_sample")
    loss.backward()
    stem_grad = mobilenet.backbone.stem[0].weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    for name, p in mobilenet.named_parameters():
        assert p.grad is not None, name


def test_pose_landmarks_reproduces_aflw2000_labels():
    if not AFLW2K_MINI.is_file():
        pytest.skip(f"{AFLW2K_MINI} not found")
    h5py = pytest.importorskip("h5py")
    with h5py.File(AFLW2K_MINI, "r") as f:
        quats, coords, shape, pt3d = (torch.as_tensor(f[k][:], dtype=torch.float64)
                                      for k in ("quats", "coords", "shapeparams", "pt3d_68"))
    pred = pose_landmarks(quats, coords, shape)  # pixels in, pixels out
    assert pred.shape == pt3d.shape == (16, 68, 3)
    err = (pred[..., :2] - pt3d[..., :2]).norm(dim=-1) / coords[:, None, 2]  # relative to head radius
    # Labels are stored in float32 and fitted, so small residuals remain; per-point max is ~2.5 %.
    assert err.mean(dim=-1).max() < 0.015, err.mean(dim=-1)
    assert err.max() < 0.03
