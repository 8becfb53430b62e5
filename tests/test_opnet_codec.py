"""OpNet's targets codec (hpe_bench/codecs/opnet.py): head-size prior, encode (targets), decode (6DoF)."""
import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.assets import arkit_face
from hpe_bench.losses.opnet import OpNetLoss
from hpe_bench.models.opnet import OpNet, pose_landmarks
from hpe_bench.codecs.opnet import (BFM_ORIGIN_M, BFM_UNIT_M, decode, encode, fit_bfm68_to_arkit,
                                    head_coord_from_pose)
from hpe_bench.schema import FIELDS

S = 129
D = torch.float64


def test_head_size_prior_is_the_fit_of_bfm68_to_arkit():
    s, o, rms = fit_bfm68_to_arkit()
    assert s == pytest.approx(BFM_UNIT_M, abs=1e-6)
    np.testing.assert_allclose(o, BFM_ORIGIN_M, atol=1e-6)
    assert 0.08 < s < 0.12 and rms < 0.01  # a head "radius" of ~10 cm; fit to < 1 cm RMS


def _scene_batch(R, t, K, image_size=256):
    """Schema batch of the ARKit mean face at poses ``R (B, 3, 3)``, ``t (B, 3)`` (labels as the synthetic renderer makes them)."""
    arkit = arkit_face()
    V = torch.as_tensor(arkit["mean_vertices"], dtype=D)
    B = R.shape[0]
    lm_cam = G.transform_points(V[arkit["keypoints_68"]].expand(B, -1, -1), R, t)
    uv_all = G.project_points(G.transform_points(V.expand(B, -1, -1), R, t), K)
    batch = {"image": torch.zeros(B, 3, image_size, image_size, dtype=torch.uint8),
             "box": G.box_from_points(uv_all), "sample_id": [str(i) for i in range(B)], "dataset": ["x"] * B}
    for f in FIELDS:
        batch[f.name] = torch.zeros((B,) + tuple(n or 1 for n in f.shape), dtype=D)
        batch[f"has_{f.name}"] = torch.zeros(B, dtype=torch.bool)
    labels = {"R": R, "t": t, "K": K, "landmarks_2d": G.project_points(lm_cam, K),
              "landmarks_3d": G.depth_relative_points(lm_cam, K, t)}
    for k, v in labels.items():
        batch[k], batch[f"has_{k}"] = v, torch.ones(B, dtype=torch.bool)
    return batch


def _poses(B=6, seed=0, off_centre=0.0):
    g = torch.Generator().manual_seed(seed)
    ypr = (torch.rand(B, 3, generator=g, dtype=D) * 2 - 1) * torch.tensor([60.0, 30.0, 30.0], dtype=D)
    R = G.euler_to_matrix(ypr, "trg")
    z = 0.5 + torch.rand(B, generator=g, dtype=D)
    xy = (torch.rand(B, 2, generator=g, dtype=D) * 2 - 1) * 0.05 * z[:, None] + off_centre * z[:, None]
    t = torch.cat([xy, z[:, None]], -1)
    K = G.intrinsics_from_fov(torch.full((B,), 70.0, dtype=D), 256, 256)
    return R, t, K


def _crop(batch, scale=1.1):
    box = G.square_box(batch["box"], scale)
    return G.crop_transform(box, S)


def _inputs(A, K, has_K):
    """The parts of ``CropInput``'s output the codec reads: ``A``, ``K``, ``has_K`` and an S x S crop image."""
    return {"image": torch.zeros(A.shape[0], 1, S, S), "A": A, "K": K, "has_K": has_K}


@pytest.mark.parametrize("off_centre", [0.0, 0.35])
def test_targets_round_trip_to_camera_pose(off_centre):
    """Labels -> OpNet targets -> (as if predicted) -> camera R, t, landmarks: the labels come back."""
    R, t, K = _poses(off_centre=off_centre)
    batch = _scene_batch(R, t, K)
    A = _crop(batch)
    has_K = torch.ones(len(R), dtype=torch.bool)
    tg = encode(batch, _inputs(A, K, has_K))
    assert tg["has_quat"].all() and tg["has_coord"].all() and tg["has_landmarks_crop_z"].all()
    cam = decode({"R_crop": G.quat_to_matrix(tg["quat"].to(D)), "coord": tg["coord"].to(D)}, _inputs(A, K, has_K))
    assert torch.rad2deg(G.geodesic_angle(cam["R"], R)).max() < 1e-3  # float32 targets
    assert (cam["t"] - t).norm(dim=-1).max() < 1e-5 * t[:, 2].max() * 100  # < 1 mm at <= 1.5 m
    torch.testing.assert_close(cam["coord_px"], head_coord_from_pose(R, t, K), atol=1e-3, rtol=1e-5)


def test_perspective_correction_direction_on_off_centre_faces():
    """A face far off the optical axis looks, in its crop, like the orthographic view of ray^T R: posing the
    BFM mean with the corrected rotation fits the projected landmarks better than R itself or the wrong sign."""
    B = 4
    R = G.euler_to_matrix(torch.tensor([[0.0, 0, 0], [20, 0, 0], [0, 15, 0], [-10, 5, 10]], dtype=D), "trg")
    t = torch.tensor([[0.45, 0.0, 0.7], [-0.4, 0.2, 0.8], [0.0, -0.45, 0.7], [0.35, 0.35, 0.8]], dtype=D)
    K = G.intrinsics_from_fov(torch.full((B,), 90.0, dtype=D), 256, 256)
    batch = _scene_batch(R, t, K)
    A = _crop(batch)
    tg = encode(batch, _inputs(A, K, torch.ones(B, dtype=torch.bool)))
    coord = tg["coord"].to(D)
    R_local = G.quat_to_matrix(tg["quat"].to(D))
    target_xy = tg["landmarks_crop"][..., :2].to(D)
    uv = head_coord_from_pose(R, t, K)[:, :2]
    ray = G.ray_rotation(K, uv)
    assert torch.rad2deg(G.geodesic_angle(ray, torch.eye(3, dtype=D))).min() > 25  # really off-centre

    def fit_error(Rc):
        q = G.matrix_to_quat(Rc)
        return (pose_landmarks(q, coord, torch.zeros(B, 50, dtype=D))[..., :2] - target_xy).norm(dim=-1).mean(-1)

    err_corrected, err_plain, err_wrong = fit_error(R_local), fit_error(R), fit_error(ray @ R)
    assert (err_corrected < 0.7 * err_plain).all(), (err_corrected, err_plain)
    assert (err_plain < err_wrong).all()


def test_no_K_samples_keep_their_rotation_and_use_head_2d():
    """Weak-perspective datasets (no K): quat is R as is; coord comes from head_2d, landmarks 2D only -> no z."""
    R, t, K = _poses(B=3, off_centre=0.3)
    batch = _scene_batch(R, t, K)
    for k in ("K", "t", "landmarks_3d"):
        batch[f"has_{k}"][:] = False
    batch["head_2d"] = torch.tensor([[120.0, 110.0, 40.0]] * 3, dtype=D)
    batch["has_head_2d"][:] = True
    K_fb = G.fallback_intrinsics(256, 256, D).expand(3, 3, 3)
    A = _crop(batch)
    tg = encode(batch, _inputs(A, K_fb, batch["has_K"]))
    Rq = G.quat_to_matrix(tg["quat"].to(D))
    assert torch.rad2deg(G.geodesic_angle(Rq, R)).max() < 1e-3
    xy = G.crop_to_normalized(G.apply_transform_2d(A, batch["head_2d"][:, None, :2]), S)[:, 0]
    torch.testing.assert_close(tg["coord"][:, :2].to(D), xy, atol=1e-5, rtol=0)
    torch.testing.assert_close(tg["coord"][:, 2].to(D), 40.0 * A[:, 0, 0] * 2 / (S - 1), atol=1e-5, rtol=0)
    assert tg["has_landmarks_crop"].all() and not tg["has_landmarks_crop_z"].any()
    cam = decode({"R_crop": Rq, "coord": tg["coord"].to(D)}, _inputs(A, K_fb, batch["has_K"]))
    torch.testing.assert_close(cam["coord_px"], batch["head_2d"], atol=1e-3, rtol=0)
    torch.testing.assert_close(cam["R"], Rq)


def test_targets_on_real_aflw2000_labels(shared_assets):
    """Real OpNet labels (aflw2kmini.h5) through the schema path: the posed BFM68 model with the *target*
    quat/coord/shape reproduces the *target* landmarks (x, y and re-centred z) in the crop frame."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(shared_assets / "aflw2kmini.h5", "r") as f:
        quats, coords, rois = (torch.as_tensor(f[k][:], dtype=D) for k in ("quats", "coords", "rois"))
        pt3d, shp = torch.as_tensor(f["pt3d_68"][:], dtype=D), torch.as_tensor(f["shapeparams"][:], dtype=D)
    B = len(quats)
    batch = {"box": rois, "image": torch.zeros(B, 3, 450, 450, dtype=torch.uint8)}
    for fld in FIELDS:
        batch[fld.name] = torch.zeros((B,) + tuple(n or 1 for n in fld.shape), dtype=D)
        batch[f"has_{fld.name}"] = torch.zeros(B, dtype=torch.bool)
    for k, v in {"R": G.quat_to_matrix(quats), "head_2d": coords, "landmarks_3d": pt3d, "shape_params": shp}.items():
        batch[k], batch[f"has_{k}"] = v, torch.ones(B, dtype=torch.bool)
    A = _crop(batch)
    K_fb = G.fallback_intrinsics(450, 450, D).expand(B, 3, 3)
    tg = encode(batch, _inputs(A, K_fb, batch["has_K"]))
    posed = pose_landmarks(tg["quat"].to(D), tg["coord"].to(D), tg["shape_params"].to(D))
    err = (posed - tg["landmarks_crop"].to(D)).norm(dim=-1).mean(-1) / tg["coord"][:, 2].to(D)
    assert err.max() < 0.06, err  # < 6 % of the head radius per point, z included


def test_network_returns_camera_predictions_and_loss_builds_targets():
    """OpNet on CropInput-like inputs: R, t, landmarks_2d consistent with its crop outputs; the loss encodes its
    targets from schema labels and the inputs and is ~0 in rotation when the prediction equals the label."""
    torch.manual_seed(0)
    R, t, K = _poses(B=2, off_centre=0.2)
    batch = _scene_batch(R, t, K)
    A = _crop(batch)
    net = OpNet().eval()
    inputs = {"image": torch.zeros(2, 1, S, S), "A": A.float(), "K": K.float(), "has_K": batch["has_K"]}
    with torch.no_grad():
        pred = net(inputs)
    assert pred["R"].shape == (2, 3, 3) and pred["t"].shape == (2, 3) and pred["landmarks_2d"].shape == (2, 68, 2)
    assert not {"A", "K", "has_K", "crop_size"} & set(pred)  # predictions only: the loss gets the inputs itself
    Lr = pred["rot_scale_tril"]
    torch.testing.assert_close(pred["per_sample"]["sigma_rot_frobenius"],
                               torch.linalg.matrix_norm(Lr @ Lr.transpose(-1, -2)))
    lm_px = G.apply_transform_2d(torch.linalg.inv(A.float()), G.normalized_to_crop(pred["landmarks_crop"][..., :2], S))
    torch.testing.assert_close(pred["landmarks_2d"], lm_px, atol=1e-3, rtol=1e-5)

    fbatch = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    tg = encode(fbatch, _inputs(A, K, batch["has_K"]))
    pred = dict(pred, quat=tg["quat"], R_crop=G.quat_to_matrix(tg["quat"]))
    terms = OpNetLoss().unweighted_terms(pred, tg)
    full = OpNetLoss()(pred, fbatch, inputs)
    assert terms["rot"].abs() < 1e-6 and torch.isfinite(full["loss"])
    assert full["rot"].abs() < 1e-6  # the loss computed the same targets itself


def test_model_config_input_normalisation_is_opnets():
    """conf/model/opnet.yaml's crop gives OpNet's input (uint8 + 0.5) / 256 - 0.5 on a 129 px grayscale crop."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parents[1] / "conf")):
        cfg = compose("config", overrides=["model=opnet"])
    crop = instantiate(cfg.model.crop)
    values = torch.tensor([0, 37, 128, 255], dtype=torch.uint8)
    image = values.view(4, 1, 1, 1).expand(4, 3, 40, 40).contiguous()
    batch = {"image": image, "box": torch.tensor([[5.0, 5.0, 30.0, 30.0]] * 4), "K": torch.zeros(4, 3, 3),
             "has_K": torch.zeros(4, dtype=torch.bool)}
    out = crop(batch)
    assert out["image"].shape == (4, 1, 129, 129)
    expected = (values.double() + 0.5) / 256 - 0.5
    torch.testing.assert_close(out["image"][:, 0, 64, 64].double(), expected, atol=1e-5, rtol=0)
