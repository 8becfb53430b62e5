"""300W-LP loader on a fixture tree written in the real layout (scipy.io.savemat, cv2 JPEG)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from hpe_bench.data.raw import LayoutError, RecordError
from hpe_bench.data.w300lp import W300LP, photo_group
from hpe_bench.schema import validate_sample

W, H = 450, 420
TX, TY, SCALE = 220.0, 240.0, 1.5e-3
EYE_CORNERS = [36, 39, 42, 45]


def expected_labels(pose_deg, width=W, height=H):
    p, y, r = np.radians(pose_deg)
    R = Rotation.from_euler("XYZ", [-p, y, r]).as_matrix()
    size = 0.5 * SCALE / 224.0 * width * 1e5
    xy = np.array([TX, height - TY]) + (R @ np.array([0.0, -0.26, -0.9]))[:2] * size
    return R, np.array([xy[0], xy[1], size])


def write_record(root: Path, folder: str, stem: str, pose_deg, rng, landmarks=True):
    """``<folder>/<stem>.jpg + .mat`` and (un-flipped folders) ``landmarks/<folder>/<stem>_pts.mat``."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    mat = {"Pose_Para": np.array([[*np.radians(pose_deg), TX, TY, 30.0, SCALE]], dtype=np.float32),
           "Shape_Para": (rng.normal(size=(199, 1)) * 2e5).astype(np.float32),
           "Exp_Para": rng.normal(size=(29, 1)).astype(np.float32),
           "pt2d": rng.uniform(100, 300, size=(2, 68)).astype(np.float32),
           "roi": np.array([[0, 0, W, H]], dtype=np.float32)}
    scipy.io.savemat(root / folder / f"{stem}.mat", mat)
    cv2.imwrite(str(root / folder / f"{stem}.jpg"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    if landmarks and not folder.endswith("_Flip"):
        (root / "landmarks" / folder).mkdir(parents=True, exist_ok=True)
        pts = {"pts_2d": rng.uniform(120, 330, size=(68, 2)), "pts_3d": rng.uniform(110, 340, size=(68, 2))}
        scipy.io.savemat(root / "landmarks" / folder / f"{stem}_pts.mat", pts)
    return mat


@pytest.fixture()
def wlp_root(tmp_path):
    rng = np.random.default_rng(0)
    for subset in ("AFW", "HELEN", "IBUG", "LFPW"):
        for k in range(2):
            write_record(tmp_path, subset, f"{subset}_1{k}_1_0", (10.0, 20.0, 30.0), rng)
            write_record(tmp_path, subset, f"{subset}_1{k}_1_1", (10.0, 35.0, 30.0), rng)
            write_record(tmp_path, f"{subset}_Flip", f"{subset}_1{k}_1_0", (10.0, -20.0, -30.0), rng)
    return tmp_path


def test_lists_every_subset_and_the_flipped_copies(wlp_root):
    ds = W300LP(wlp_root, split="all")
    ids = [ds.record_id(i) for i in range(len(ds))]
    assert len(ids) == 4 * 6 and len(set(ids)) == len(ids)
    assert "300wlp/AFW_Flip/AFW_10_1_0" in ids and "300wlp/IBUG/IBUG_11_1_1" in ids
    assert len(W300LP(wlp_root, split="all", flipped=False)) == 16
    assert len(W300LP(wlp_root, split="all", subsets=["IBUG"])) == 6


def test_labels(wlp_root):
    ds = W300LP(wlp_root, split="all", subsets=["AFW"], flipped=False)
    s = ds.read(0)
    validate_sample(s)
    assert s["sample_id"] == "300wlp/AFW/AFW_10_1_0" and ds.euler_rule == "opnet"
    R, head_2d = expected_labels((10.0, 20.0, 30.0))
    np.testing.assert_allclose(s["R"], R, atol=1e-6)
    np.testing.assert_allclose(s["head_2d"], head_2d, rtol=1e-6)
    mat = scipy.io.loadmat(wlp_root / "AFW" / "AFW_10_1_0.mat")
    np.testing.assert_allclose(s["shape_params"], np.concatenate(
        [mat["Shape_Para"][:40, 0] / 2e6, mat["Exp_Para"][:10, 0] / 5.0]), rtol=1e-6)
    pts = scipy.io.loadmat(wlp_root / "landmarks" / "AFW" / "AFW_10_1_0_pts.mat")
    np.testing.assert_allclose(s["landmarks_2d"], pts["pts_3d"])
    np.testing.assert_allclose(s["box"], [*pts["pts_3d"].min(0), *pts["pts_3d"].max(0)])
    assert "K" not in s and "t" not in s
    s2 = W300LP(wlp_root, split="all", subsets=["AFW"], flipped=False, landmarks_2d="pts_2d").read(0)
    np.testing.assert_allclose(s2["landmarks_2d"], pts["pts_2d"])


def test_landmarks_3d_are_the_posed_bfm68_model(wlp_root, shared_assets):
    s = W300LP(wlp_root, split="all", subsets=["AFW"], flipped=False).read(0)
    with np.load(shared_assets / "bfm68.npz") as d:
        local = d["mean"].astype(np.float64) + d["basis"].astype(np.float64) @ s["shape_params"]
    pts = local @ s["R"].T * s["head_2d"][2] + [s["head_2d"][0], s["head_2d"][1], 0.0]
    pts[:, 2] -= pts[EYE_CORNERS, 2].mean()
    np.testing.assert_allclose(s["landmarks_3d"], pts, atol=1e-6)


def test_flipped_landmarks_are_mirrored(wlp_root):
    ds = W300LP(wlp_root, split="all", subsets=["AFW"])
    ids = [ds.record_id(i) for i in range(len(ds))]
    s = ds.read(ids.index("300wlp/AFW_Flip/AFW_10_1_0"))
    orig = scipy.io.loadmat(wlp_root / "landmarks" / "AFW" / "AFW_10_1_0_pts.mat")["pts_3d"]
    # x -> W - 1 - x (integer pixel centres) and left/right iBUG indices swapped, checked by hand on pairs
    for a, b in [(0, 16), (16, 0), (36, 45), (39, 42), (30, 30), (48, 54), (51, 51), (31, 35), (62, 62)]:
        np.testing.assert_allclose(s["landmarks_2d"][a], [W - 1 - orig[b, 0], orig[b, 1]])
    R, _ = expected_labels((10.0, -20.0, -30.0))  # the flipped image's own Pose_Para
    np.testing.assert_allclose(s["R"], R, atol=1e-6)


def test_train_val_split_holds_out_whole_photos(wlp_root):
    every = W300LP(wlp_root, split="all")
    train = W300LP(wlp_root, split="train", val_fraction=0.5)
    val = W300LP(wlp_root, split="val", val_fraction=0.5)
    ids = lambda d: {d.record_id(i) for i in range(len(d))}  # noqa: E731
    assert ids(train) | ids(val) == ids(every) and not ids(train) & ids(val)
    assert len(val) > 0 and len(train) > 0
    groups = lambda d: {photo_group(*d.records[i]) for i in range(len(d))}  # noqa: E731
    assert not groups(train) & groups(val)  # _0/_1 variants and the _Flip copy stay together
    assert photo_group("AFW_Flip", "AFW_10_1_1") == photo_group("AFW", "AFW_10_1_0") == "AFW/AFW_10_1"
    assert len(W300LP(wlp_root, split="val", val_fraction=0.0)) == 0


def test_missing_root_and_wrong_layout(tmp_path, wlp_root):
    with pytest.raises(LayoutError) as err:
        W300LP(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "landmarks/{AFW,HELEN,IBUG,LFPW}" in str(err.value)
    with pytest.raises(LayoutError) as err:
        W300LP(wlp_root / "AFW")  # one level too deep
    assert "AFW/AFW" in str(err.value) and "_Flip" in str(err.value)
    import shutil
    shutil.rmtree(wlp_root / "landmarks" / "LFPW")
    with pytest.raises(LayoutError, match="landmarks/LFPW"):
        W300LP(wlp_root)
    assert len(W300LP(wlp_root, split="all", landmarks_2d=None)) == 24  # landmarks folder not needed then


def test_missing_landmark_file_names_it(wlp_root):
    (wlp_root / "landmarks" / "IBUG" / "IBUG_10_1_0_pts.mat").unlink()
    ds = W300LP(wlp_root, split="all", subsets=["IBUG"], flipped=False)
    with pytest.raises(RecordError, match="IBUG_10_1_0_pts.mat"):
        ds.read(0)


def test_corrupt_jpeg_and_nan_name_the_file(wlp_root):
    (wlp_root / "HELEN" / "HELEN_10_1_0.jpg").write_bytes(b"")
    ds = W300LP(wlp_root, split="all", subsets=["HELEN"], flipped=False)
    with pytest.raises(RecordError, match="HELEN_10_1_0.jpg"):
        ds.read(0)
    mat = scipy.io.loadmat(wlp_root / "HELEN" / "HELEN_10_1_1.mat")
    mat["Pose_Para"][0, 1] = np.nan
    scipy.io.savemat(wlp_root / "HELEN" / "HELEN_10_1_1.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(RecordError, match="HELEN_10_1_1.*Pose_Para"):
        ds.read(1)
