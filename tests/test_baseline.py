"""Direct-regression baseline, its loss, and the model input crop."""
import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.losses.direct_regression import DirectRegressionLoss
from hpe_bench.models import create_model, list_models
from hpe_bench.models.crop import CropInput
from hpe_bench.schema import collate


def toy_batch(B=3, size=64, with_K=True):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(B):
        s = {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "box": np.array([10.0, 12, 40, 50]),
             "dataset": "toy", "sample_id": f"toy/{i}", "topology": "",
             "R": G.euler_to_matrix(torch.tensor([10.0 * i, 5.0, 0.0], dtype=torch.float64), "trg").numpy(),
             "t": np.array([0.01, -0.02, 0.6 + 0.1 * i])}
        if with_K:
            s["K"] = np.array([[80.0, 0, 31.5], [0, 80.0, 31.5], [0, 0, 1]])
        samples.append(s)
    return collate(samples)


def test_registry_lists_baseline():
    assert "direct_regression" in list_models()
    with pytest.raises(KeyError, match="registered"):
        create_model("nope")


def test_forward_shapes_and_rotation_validity():
    torch.manual_seed(0)
    net = create_model("direct_regression", backbone="resnet10t")
    crop = CropInput(size=64)
    pred = net(crop(toy_batch()))
    assert pred["R"].shape == (3, 3, 3) and pred["t"].shape == (3, 3)
    eye = torch.eye(3).expand(3, 3, 3)
    assert torch.allclose(pred["R"] @ pred["R"].transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.det(pred["R"]), torch.ones(3), atol=1e-5)


def test_loss_masks_samples_without_labels():
    batch = toy_batch()
    loss = DirectRegressionLoss()
    pred = {"R": torch.eye(3).expand(3, 3, 3).clone(), "t": batch["t"].clone()}
    full = loss(pred, batch, {})  # the network inputs are unused by this loss
    # Sample 0 has R = Rz(0) Rx(5) Ry(0): its own error only. Remove sample 2's label: the mean changes to
    # the mean of samples 0 and 1, and sample 2's (largest) error no longer counts.
    per = (pred["R"] - batch["R"]).square().sum((-1, -2))
    batch["has_R"][2] = False
    masked = loss(pred, batch, {})
    assert full["rot"].item() == pytest.approx(per.mean().item(), rel=1e-5)
    assert masked["rot"].item() == pytest.approx(per[:2].mean().item(), rel=1e-5)
    assert full["trans"].item() == 0.0
    batch["has_R"][:] = False
    assert loss(pred, batch, {})["rot"].item() == 0.0


def test_crop_inputs_agree_with_geometry():
    batch = toy_batch(with_K=True)
    inputs = CropInput(size=32, box_scale=1.0)(batch)
    # A 3D point projected with the crop intrinsics lands where the crop map sends its full-image pixel.
    X = torch.tensor([[[0.02, -0.01, 0.7]]]).expand(3, 1, 3)
    full = G.project_points(X, inputs["K"])
    crop = G.project_points(X, inputs["K_crop"])
    assert torch.allclose(G.apply_transform_2d(inputs["A"], full), crop, atol=1e-4)
    # bbox_info: box centre (25, 31) relative to (31.5, 31.5), side 38 (square of the 30x38 box), over f = 80
    assert torch.allclose(inputs["bbox_info"][0], torch.tensor([(25 - 31.5) / 80, (31 - 31.5) / 80, 38 / 80]))


def test_crop_uses_fallback_intrinsics_without_K():
    inputs = CropInput(size=32)(toy_batch(with_K=False, size=64))
    assert torch.allclose(inputs["K"][0, 0, 0], torch.tensor(128.0))  # f = W + H


def test_gradients_reach_backbone():
    torch.manual_seed(0)
    net = create_model("direct_regression", backbone="resnet10t")
    batch = toy_batch()
    inputs = CropInput(size=64)(batch)
    out = DirectRegressionLoss()(net(inputs), batch, inputs)["loss"]
    out.backward()
    grads = [p.grad for p in net.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
