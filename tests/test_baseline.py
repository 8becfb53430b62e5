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


def _constant_head(net, bias):
    """Zero the last layer's weights so the head outputs ``bias`` for every input."""
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_ray_frame_points_identity_along_the_box_ray():
    """rotation_frame=ray with R_local = I: the head's z axis is the unit ray through the box centre (known
    values from K and the box, computed by hand here), and the rotation is the minimal one (no twist about z)."""
    torch.manual_seed(0)
    net = create_model("direct_regression", backbone="resnet10t", rotation_frame="ray").eval()
    _constant_head(net, [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    inputs = CropInput(size=64)(toy_batch())
    with torch.no_grad():
        R = net(inputs)["R"]
    box = inputs["box"][0]
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    d = np.array([(cx - 31.5) / 80.0, (cy - 31.5) / 80.0, 1.0])
    d /= np.linalg.norm(d)
    assert np.allclose(R[0, :, 2].numpy(), d, atol=1e-5)
    # minimal rotation: it turns about k = z x d, so k itself is left in place (no twist about the ray)
    k = np.cross([0, 0, 1.0], d)
    k /= np.linalg.norm(k)
    assert np.allclose(R[0].numpy() @ k, k, atol=1e-5)
    camera = create_model("direct_regression", backbone="resnet10t", rotation_frame="camera").eval()
    _constant_head(camera, [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    with torch.no_grad():
        assert torch.allclose(camera(inputs)["R"][0], torch.eye(3), atol=1e-6)


def test_correction_translation_projects_onto_the_box_centre():
    """translation=correction with (s, dx, dy) = (1.5, 0.1, 0): depth 0.2 s fx / b and the head centre projects
    b dx to the right of the box centre (TRG Eq. 2)."""
    net = create_model("direct_regression", backbone="resnet10t", translation="correction").eval()
    _constant_head(net, [1.0, 0, 0, 0, 1.0, 0, 1.5, 0.1, 0.0])
    inputs = CropInput(size=64)(toy_batch())
    with torch.no_grad():
        t = net(inputs)["t"][0].double()
    box = inputs["box"][0].double()
    b = float(box[2] - box[0])
    assert float(t[2]) == pytest.approx(0.2 * 1.5 * 80.0 / b, rel=1e-5)
    u, v = 80.0 * t[0] / t[2] + 31.5, 80.0 * t[1] / t[2] + 31.5
    assert float(u) == pytest.approx(float(box[0] + box[2]) / 2 + 0.1 * b, abs=1e-3)
    assert float(v) == pytest.approx(float(box[1] + box[3]) / 2, abs=1e-3)


def test_parametrisation_names_are_checked():
    with pytest.raises(ValueError, match="rotation_frame"):
        create_model("direct_regression", backbone="resnet10t", rotation_frame="world")
    with pytest.raises(ValueError, match="translation"):
        create_model("direct_regression", backbone="resnet10t", translation="metres")


def test_auxiliary_landmarks_map_crop_centre_to_box_centre_and_train():
    """landmarks=True: a head output of (0, 0) (the crop's centre pixel (S-1)/2 in the normalised frame) is
    ``box_lo + (S - 1) / 2 * side / S`` in full-image pixels (crop_transform: x' = (x - x0) S / side); the loss term
    is the mean per-landmark L1 in that frame (here |0 - gt|, gt worked out by hand)."""
    net = create_model("direct_regression", backbone="resnet10t", landmarks=True).eval()
    with torch.no_grad():
        net.landmark_head.weight.zero_()
        net.landmark_head.bias.zero_()
    batch = toy_batch()
    batch["landmarks_2d"] = torch.zeros(3, 68, 2, dtype=torch.float64) + torch.tensor([25.0, 31.0], dtype=torch.float64)
    batch["has_landmarks_2d"] = torch.tensor([True, True, False])
    inputs = CropInput(size=64)(batch)
    with torch.no_grad():
        pred = net(inputs)
    box = inputs["box"]
    side = (box[:, 2] - box[:, 0]).double()
    lo = box[:, :2].double()
    expected_px = lo + 31.5 * side[:, None] / 64
    assert torch.allclose(pred["landmarks_2d"].double(), expected_px[:, None].expand(3, 68, 2), atol=1e-3)
    assert pred["heatmap_landmarks"].shape == (3, 68, 2)
    terms = DirectRegressionLoss(landmarks=2.0)(pred, batch, inputs)
    # GT in the normalised crop frame: crop px (p - lo) S / side, then x * 2 / (S - 1) - 1
    gt = (torch.tensor([25.0, 31.0], dtype=torch.float64) - lo) * 64 / side[:, None] * 2 / 63 - 1
    expected = gt[:2].abs().sum(-1).mean()
    assert float(terms["landmarks"]) == pytest.approx(2.0 * float(expected), rel=1e-4)
    assert "landmarks" not in DirectRegressionLoss()(pred, batch, inputs)


def test_rotation_loss_norms_known_values():
    """A 60 degree error about z: squared Frobenius 4 (1 - cos 60) = 2, Frobenius 2 sqrt(2) sin(30) = sqrt(2)."""
    batch = toy_batch()
    a = np.radians(60.0)
    Rz = torch.tensor([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], dtype=torch.float64)
    pred = {"R": batch["R"].double() @ Rz, "t": batch["t"].clone()}
    batch = dict(batch, R=batch["R"].double())
    squared = DirectRegressionLoss()(pred, batch, {})
    frob = DirectRegressionLoss(rot_norm="frobenius")(pred, batch, {})
    assert float(squared["rot"]) == pytest.approx(2.0, abs=1e-6)
    assert float(frob["rot"]) == pytest.approx(np.sqrt(2.0), abs=1e-6)
    perfect = DirectRegressionLoss(rot_norm="frobenius")({"R": batch["R"].clone().requires_grad_(), "t": batch["t"]},
                                                          batch, {})
    perfect["loss"].backward()  # finite gradient at zero error
    with pytest.raises(ValueError, match="rot_norm"):
        DirectRegressionLoss(rot_norm="l1")

