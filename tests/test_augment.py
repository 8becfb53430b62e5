"""Batch augmentation: labels of an augmented synthetic render equal the labels of the transformed scene,
the warped image equals a re-render under the transformed camera, mirroring twice is the identity."""
import dataclasses
import math

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hpe_bench import geometry as G
from hpe_bench.augment import ColorJitter, MaskPatch, OpNetIntensity, OpNetRoiAffine, TRGCropAugment, warp_batch
from hpe_bench.data.synthetic.raster import render_scene
from hpe_bench.data.synthetic.scene import mesh, sample_scene, scene_labels
from hpe_bench.models.crop import CropInput
from hpe_bench.schema import collate

SIZE = 128
S3 = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"


def _sample(scene):
    image, mask = render_scene(scene)
    s = dict(scene_labels(scene))
    s.update(image=image, dataset="synthetic", sample_id=str(scene.index), topology="arkit1220")
    s["head_2d"] = np.array([40.0, 50.0, 30.0], np.float32)
    s["shape_params"] = np.linspace(-0.5, 0.5, 50).astype(np.float32)
    return s, mask


@pytest.fixture(scope="module")
def scenes():
    """The 3 scenes with the largest faces among the first 24 (mask IoU needs faces of some size)."""
    cands = [sample_scene(3, "train", i, SIZE) for i in range(24)]
    cands.sort(key=lambda s: -np.ptp(s.uv, 0).prod())
    return cands[:3]


@pytest.fixture(scope="module")
def batch_and_masks(scenes):
    pairs = [_sample(s) for s in scenes]
    return collate([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _rerender(scene, S):
    """The scene seen by the camera equivalent to the image map ``S (3, 3)`` (float64 numpy)."""
    St = torch.from_numpy(S)[None]
    Q3, K = G.similarity_camera(St, torch.from_numpy(scene.K)[None])
    R, t = G.similarity_pose(Q3, torch.from_numpy(scene.R)[None], torch.from_numpy(scene.t)[None])
    V = torch.from_numpy(scene.vertices)
    if np.linalg.det(S[:2, :2]) < 0:  # the mirrored scene holds the mirrored head (same mesh topology)
        V = G.mirror_vertices(V, torch.from_numpy(G.vertex_mirror_permutation("arkit1220").copy()))
    v_cam = G.transform_points(V[None], R, t)[0]
    uv = G.project_points(v_cam[None], K)[0]
    light = (Q3[0] @ torch.from_numpy(scene.light_dir)).numpy()
    return dataclasses.replace(scene, K=K[0].numpy(), R=R[0].numpy(), t=t[0].numpy(), vertices=V.numpy(),
                               v_cam=v_cam.numpy(), uv=uv.numpy(), light_dir=light)


MAPS = {  # name: (scale, angle_deg, mirror); about the face-box centre (+ (2, -3) px), onto the image centre
    "rotation": (1.0, 25.0, False),
    "scale": (1.3, 0.0, False),
    "mirror": (1.0, 0.0, True),  # plain flip about x = (W - 1) / 2 (hand-checked box below)
    "rotation_scale_mirror": (0.8, -35.0, True),
}


def _S(name, box, angle_sign=1.0):
    s, a, m = MAPS[name]
    a = a * angle_sign
    B = len(box)
    ci = ((box[:, :2] + box[:, 2:]) / 2 + torch.tensor([2.0, -3.0])).double()
    co = torch.full((B, 2), (SIZE - 1) / 2 + 1.0, dtype=torch.float64)
    if name == "mirror":
        ci = co = torch.full((B, 2), (SIZE - 1) / 2, dtype=torch.float64)
    return G.similarity_transform(ci, co, torch.full((B,), s, dtype=torch.float64),
                                  torch.full((B,), math.radians(a), dtype=torch.float64), torch.full((B,), m))


def test_similarity_camera_is_exact_for_projection():
    g = torch.Generator().manual_seed(0)
    B = 5
    K = G.make_intrinsics(*(torch.rand(4, B, generator=g, dtype=torch.float64) * torch.tensor([[300.0], [0], [50], [60]])
                            + torch.tensor([[200.0], [0], [40], [30]])))
    K[:, 1, 1] = K[:, 0, 0]
    D = {"dtype": torch.float64, "generator": g}
    S = G.similarity_transform(torch.rand(B, 2, **D) * 100, torch.rand(B, 2, **D) * 100,
                               0.5 + torch.rand(B, **D), torch.rand(B, **D) * 6,
                               torch.tensor([True, False, True, False, True]))
    X = torch.randn(B, 10, 3, **D) * 0.1 + torch.tensor([0, 0, 1.0], dtype=torch.float64)
    Q3, K2 = G.similarity_camera(S, K)
    lhs = G.project_points(X @ Q3.transpose(-1, -2), K2)
    rhs = G.apply_transform_2d(S, G.project_points(X, K))
    torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=0)
    s = S[:, :2, :2].det().abs().sqrt()
    torch.testing.assert_close(K2[:, 0, 0], s * K[:, 0, 0])  # pinhole form kept: f' = s f, no skew
    torch.testing.assert_close(K2[:, 0, 1], torch.zeros(B, dtype=torch.float64), atol=1e-9, rtol=0)
    R = G.rotvec_to_matrix(torch.randn(B, 3, **D))
    R2, t2 = G.similarity_pose(Q3, R, torch.randn(B, 3, **D))
    torch.testing.assert_close(R2.det(), torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(R2 @ R2.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(B, 3, 3))


def test_plain_flip_matches_the_documented_rules():
    K = G.make_intrinsics(*map(torch.tensor, ([300.0], [300.0], [40.0], [50.0])))
    S = torch.tensor([[[-1.0, 0, SIZE - 1], [0, 1, 0], [0, 0, 1]]])  # image[:, ::-1]: x -> W - 1 - x
    Q3, K2 = G.similarity_camera(S, K)
    torch.testing.assert_close(K2[0], torch.tensor([[300.0, 0, SIZE - 1 - 40.0], [0, 300, 50], [0, 0, 1]]))
    R = G.rotvec_to_matrix(torch.tensor([[0.3, -0.2, 0.5]]))
    R2, t2 = G.similarity_pose(Q3, R, torch.tensor([[0.1, 0.2, 1.0]]))
    torch.testing.assert_close(R2, G.mirror_rotation(R))
    torch.testing.assert_close(t2, torch.tensor([[-0.1, 0.2, 1.0]]))


@pytest.mark.parametrize("name", list(MAPS))
def test_labels_and_image_equal_the_transformed_scene(name, scenes, batch_and_masks):
    batch, masks = batch_and_masks
    S = _S(name, batch["box"])
    out = warp_batch(batch, S)
    mirror = MAPS[name][2]
    perm = list(G.IBUG68_MIRROR) if mirror else list(range(68))
    for i, scene in enumerate(scenes):
        moved = _rerender(scene, S[i].numpy())
        ref = scene_labels(moved)  # labels computed from (K', R', t') and the (mirrored) head
        torch.testing.assert_close(out["K"][i], torch.from_numpy(ref["K"]), atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(out["R"][i], torch.from_numpy(ref["R"]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["t"][i], torch.from_numpy(ref["t"]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["vertices"][i], torch.from_numpy(ref["vertices"]), atol=1e-6, rtol=0)
        # landmarks: the augmented labels are the original points, moved and index-swapped; re-projecting the
        # original 3D landmarks (mirrored for a mirror) with (K', R', t') must land on them
        kp = mesh()["keypoints"]
        lm_head = torch.from_numpy(scene.vertices[kp])[list(G.IBUG68_MIRROR) if mirror else slice(None)]
        lm_head = lm_head * (S3.diag() if mirror else 1.0)
        cam = G.transform_points(lm_head[None], torch.from_numpy(moved.R)[None], torch.from_numpy(moved.t)[None])
        proj = G.project_points(cam, torch.from_numpy(moved.K)[None])[0].float()
        torch.testing.assert_close(out["landmarks_2d"][i], proj, atol=2e-3, rtol=0)
        z = G.depth_relative_points(cam, torch.from_numpy(moved.K)[None], torch.from_numpy(moved.t)[None])[0].float()
        torch.testing.assert_close(out["landmarks_3d"][i], z, atol=2e-3, rtol=1e-4)
        # the 64 keypoints placed symmetrically in the ARKit mesh also agree with the mirrored scene's own labels
        ok = [j for j in range(68) if not mirror or j not in (1, 15, 41, 46)]
        torch.testing.assert_close(out["landmarks_2d"][i, ok], torch.from_numpy(ref["landmarks_2d"][ok]), atol=2e-3, rtol=0)
        # image: warped mask vs re-rendered mask, colours inside both
        warped = cv2.warpAffine(masks[i].astype(np.float32), S[i, :2].numpy(), (SIZE, SIZE), flags=cv2.INTER_LINEAR) > 0.5
        img2, mask2 = render_scene(moved)
        iou = (warped & mask2).sum() / (warped | mask2).sum()
        assert iou > 0.97, f"{name} sample {i}: mask IoU {iou:.3f}"  # measured >= 0.983
        if name == "rotation":  # negative control: the opposite rotation's camera does not match the warp
            wrong = _rerender(scene, _S(name, batch["box"], angle_sign=-1.0)[i].numpy())
            _, mask3 = render_scene(wrong)
            assert (warped & mask3).sum() / (warped | mask3).sum() < 0.9
        inner = cv2.erode((warped & mask2).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        aug = (out["image"][i].permute(1, 2, 0).numpy() * 255.0)
        diff = np.abs(aug[inner] - img2[inner].astype(np.float32)).mean()
        assert diff < 20.0, f"{name} sample {i}: mean abs colour difference {diff:.1f}"
    # box = box of the 4 mapped corners (hand check for the plain mirror about x = 47.5)
    if name == "mirror":
        b = batch["box"]
        torch.testing.assert_close(out["box"], torch.stack([SIZE - 1 - b[:, 2], b[:, 1], SIZE - 1 - b[:, 0], b[:, 3]], -1))
    s = MAPS[name][0]
    torch.testing.assert_close(out["head_2d"][:, 2], batch["head_2d"][:, 2] * s)


def test_mirroring_twice_is_identity(batch_and_masks):
    batch, _ = batch_and_masks
    B = batch["image"].shape[0]
    S = torch.tensor([[-1.0, 0, SIZE - 1], [0, 1, 0], [0, 0, 1]]).expand(B, 3, 3)
    once = warp_batch(batch, S)
    twice = warp_batch(once, S)
    torch.testing.assert_close(once["image"], batch["image"].float().flip(-1) / 255.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice["image"], batch["image"].float() / 255.0, atol=1e-5, rtol=0)
    for key in ("box", "K", "R", "t", "landmarks_2d", "landmarks_3d", "vertices", "head_2d"):
        torch.testing.assert_close(twice[key], batch[key], atol=1e-4, rtol=1e-6, msg=key)
    # shape parameters: the mirrored shape is a least-squares fit (the BFM basis is not symmetric), so twice is
    # only close in the landmark shape it describes, not exactly the same parameters


def test_unknown_topology_drops_dense_labels_and_input_is_untouched(batch_and_masks):
    batch, _ = batch_and_masks
    batch = dict(batch, topology=["other"] + batch["topology"][1:])
    before = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    out = warp_batch(batch, _S("mirror", batch["box"]))
    assert out["has_vertices"].tolist() == [False, True, True]
    assert all(torch.equal(batch[k], v) for k, v in before.items())


def test_roi_augment_keeps_70_percent_of_the_box_and_is_reproducible():
    B = 4000
    box = torch.tensor([[30.0, 20.0, 70.0, 90.0]]).expand(B, 4)
    batch = {"image": torch.zeros(B, 3, 4, 4, dtype=torch.uint8), "box": box}
    aug = OpNetRoiAffine(max_rotation_deg=0.0, rot90_prob=0.0)
    p = aug.sample(batch, torch.Generator().manual_seed(0))
    lo, hi = p["centre"] - p["side"][:, None] / 2, p["centre"] + p["side"][:, None] / 2
    wh = box[:, 2:] - box[:, :2]
    visible = ((torch.minimum(hi, box[:, 2:]) - torch.maximum(lo, box[:, :2])) / wh).clamp(0, 1)
    big = p["side"][:, None] >= wh  # ROI at least as wide as the box: >= 70 % of the box stays inside
    assert big.float().mean() > 0.5 and visible[big].min() >= 0.7 - 1e-5
    # narrower ROI (scale < w / max(w, h)): offset <= 0.3 w keeps 0.2 w + side / 2 inside
    assert (visible >= (0.2 + 0.5 * p["side"][:, None] / wh).clamp(max=0.7) - 1e-5).all()
    scale = p["side"] / wh.amax(1)
    assert scale.min() >= 0.6 - 1e-5 and scale.max() <= 1.6 + 1e-5 and abs(scale.mean() - 1.1) < 0.01
    assert abs(p["mirror"].float().mean() - 0.5) < 0.03
    code = OpNetRoiAffine(rotation="code", rot90_prob=0.0).sample(batch, torch.Generator().manual_seed(1))
    assert abs((code["angle"] == 0).float().mean() - 2 / 3) < 0.03 and code["angle"].abs().max() <= math.radians(30)
    small = {"image": torch.zeros(2, 3, 40, 40, dtype=torch.uint8), "box": torch.tensor([[5.0, 5, 30, 35]] * 2)}
    torch.manual_seed(7)
    a = OpNetRoiAffine(out_size=24)(small)
    torch.manual_seed(7)
    b = OpNetRoiAffine(out_size=24)(small)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["R"] if "R" in a else a["box"], b["R"] if "R" in b else b["box"])


def test_crop_canvas_is_used_by_crop_input(batch_and_masks):
    batch, _ = batch_and_masks
    torch.manual_seed(0)
    out = OpNetRoiAffine(out_size=48)(batch)
    assert out["image"].shape[-2:] == (48, 48)
    torch.testing.assert_close(out["crop_box"], torch.tensor([[0.0, 0, 48, 48]] * 3))
    crop = CropInput(size=48, mean=(0, 0, 0), std=(1, 1, 1))(out)
    torch.testing.assert_close(crop["image"], out["image"], atol=1e-5, rtol=0)  # identity crop: one resampling
    torch.testing.assert_close(crop["K_crop"], out["K"])
    plain = CropInput(size=48)(batch)  # no crop_box: unchanged behaviour
    torch.testing.assert_close(plain["box"], G.square_box(batch["box"], 1.2))
    # TRG recipe: the crop box is the jittered square box, scale 1 when out_size is None
    trg = TRGCropAugment(max_rotation_deg=0.0, flip_prob=0.0)
    p = trg.sample(batch, torch.Generator().manual_seed(0))
    sq = G.square_box(batch["box"], 1.2)
    b = sq[:, 2] - sq[:, 0]
    assert ((p["centre"] - (sq[:, :2] + sq[:, 2:]) / 2).abs() <= 0.15 * b[:, None] + 1e-4).all()
    assert ((p["side"] / b >= 0.95 - 1e-6) & (p["side"] / b <= 1.05 + 1e-6)).all()


def test_photometric_ops_follow_their_formulas(batch_and_masks):
    batch, _ = batch_and_masks
    x = batch["image"].float() / 255
    B = x.shape[0]
    aug = OpNetIntensity(noise=())
    params = aug.sample(batch, torch.Generator().manual_seed(0))
    params["ops"] = torch.zeros(B, 6, dtype=torch.bool)
    params["ops"][:, 4] = True  # brightness only: x + (b - 1), kornia semantics
    params["brightness"] = torch.tensor([0.8, 1.0, 1.3])
    out = aug.apply(batch, params)
    torch.testing.assert_close(out["image"], (x + (params["brightness"] - 1).view(-1, 1, 1, 1)).clamp(0, 1))
    assert torch.equal(out["R"], batch["R"]) and torch.equal(out["landmarks_2d"], batch["landmarks_2d"])
    params["ops"][:, 4], params["ops"][:, 2] = False, True  # gamma only: x ** g
    params["gamma"] = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(aug.apply(batch, params)["image"], x ** params["gamma"].view(-1, 1, 1, 1))
    cj = ColorJitter(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    p = cj.sample(batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cj.apply(batch, p)["image"], (x * p["brightness"].view(-1, 1, 1, 1)).clamp(0, 1),
                               atol=1e-5, rtol=0)
    mp = MaskPatch(p=1.0)
    p = mp.sample(batch, torch.Generator().manual_seed(0))
    p["rect"] = torch.tensor([[10.0, 20, 30, 25]] * B)
    img = mp.apply(batch, p)["image"]
    torch.testing.assert_close(img[:, :, 20:26, 10:31], p["colour"][:, :, None, None].expand(B, 3, 6, 21))
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[20:26, 10:31] = False
    assert torch.equal(img[:, :, outside], x[:, :, outside])


@pytest.mark.parametrize("option", ["opnet", "opnet_no_intensity", "opnet_no_rotation", "opnet_rot5", "trg"])
def test_config_options_build_and_run(option, batch_and_masks):
    batch, _ = batch_and_masks
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"augment={option}", "model=direct_regression"])
    aug = instantiate(cfg.augment)
    torch.manual_seed(0)
    out = aug(batch)
    assert out["image"].shape[-1] == cfg.model.crop.size and out["image"].dtype == torch.float32
    assert torch.isfinite(out["landmarks_2d"]).all() and (out["image"] >= 0).all() and (out["image"] <= 1).all()
    R = out["R"]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
