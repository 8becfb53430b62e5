"""AFLW2000-3D loader on fixtures written in the real format (scipy.io.savemat, cv2 JPEG) and the real labels."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from scipy.spatial.transform import Rotation

from hpe_bench.data.aflw2000 import AFLW2000, protocol_keep
from hpe_bench.data.prepared import PreparedDataset
from hpe_bench.data.raw import LayoutError, RecordError
from hpe_bench.schema import validate_sample

W, H = 450, 400  # different on purpose: y = H - ty and size ~ W are told apart
POSE_DEG = (10.0, 20.0, 30.0)  # pitch, yaw, roll as stored in Pose_Para
TX, TY, TZ, SCALE = 210.0, 230.0, 40.0, 1.6e-3
EYE_CORNERS = [36, 39, 42, 45]


def bfm68_arrays(shared_assets: Path):
    with np.load(shared_assets / "bfm68.npz") as d:
        return d["mean"].astype(np.float64), d["basis"].astype(np.float64)


def expected_labels(pose_deg=POSE_DEG, tx=TX, ty=TY, scale=SCALE, width=W, height=H):
    """R, head_2d by the explicit formulas of ../shared/reference/opnet.md, scipy only."""
    p, y, r = np.radians(pose_deg)
    R = Rotation.from_euler("XYZ", [-p, y, r]).as_matrix()
    size = 0.5 * scale / 224.0 * width * 1e5
    xy = np.array([tx, height - ty]) + (R @ np.array([0.0, -0.26, -0.9]))[:2] * size
    return R, np.array([xy[0], xy[1], size])


def write_sample(folder: Path, stem: str, rng, bfm=None, pose_deg=POSE_DEG, image=True, **overrides):
    """One ``<stem>.jpg`` + ``<stem>.mat`` with the real AFLW2000-3D field names, shapes and dtypes."""
    shape_para = (rng.normal(size=(199, 1)) * 2e5).astype(np.float32)
    exp_para = rng.normal(size=(29, 1)).astype(np.float32)
    pose = np.array([[*np.radians(pose_deg), TX, TY, TZ, SCALE]], dtype=np.float32)
    pt3d = np.zeros((3, 68), dtype=np.float32)
    if bfm is not None:  # landmarks of the 3DDFA model: z toward the camera with an arbitrary offset
        R, head_2d = expected_labels(pose_deg)
        s = np.concatenate([shape_para[:40, 0] / 2e6, exp_para[:10, 0] / 5.0])
        pts = (bfm[0] + bfm[1] @ s) @ R.T * head_2d[2] + np.array([head_2d[0], head_2d[1], 0.0])
        pt3d = np.stack([pts[:, 0], pts[:, 1], 37.0 - pts[:, 2]]).astype(np.float32)
    mat = {"Pose_Para": pose, "Shape_Para": shape_para, "Exp_Para": exp_para, "pt3d_68": pt3d,
           "pt2d": np.full((2, 21), -1.0, dtype=np.float32), "roi": np.array([[0, 0, W, H]], dtype=np.float32)}
    mat.update(overrides)
    scipy.io.savemat(folder / f"{stem}.mat", mat)
    if image:
        cv2.imwrite(str(folder / f"{stem}.jpg"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return mat


@pytest.fixture()
def aflw_root(tmp_path, shared_assets):
    rng = np.random.default_rng(0)
    bfm = bfm68_arrays(shared_assets)
    write_sample(tmp_path, "image00002", rng, bfm)
    write_sample(tmp_path, "image00004", rng, bfm, pose_deg=(5.0, 100.0, 0.0))  # |yaw| > 99: 1969 drops it
    return tmp_path


def test_labels_from_mat(aflw_root, shared_assets):
    ds = AFLW2000(aflw_root)
    assert len(ds) == 1 and ds.removed == ["image00004"] and ds.euler_rule == "opnet"
    s = ds.read(0)
    validate_sample(s)
    assert s["image"].shape == (H, W, 3) and s["sample_id"] == "aflw2000/image00002"
    R, head_2d = expected_labels()
    np.testing.assert_allclose(s["R"], R, atol=1e-6)
    np.testing.assert_allclose(s["head_2d"], head_2d, rtol=1e-6)
    mat = scipy.io.loadmat(aflw_root / "image00002.mat")
    shape = np.concatenate([mat["Shape_Para"][:40, 0] / (20 * 1e5), mat["Exp_Para"][:10, 0] / 5])
    np.testing.assert_allclose(s["shape_params"], shape, rtol=1e-6)
    pt3d = mat["pt3d_68"].T.astype(np.float64)
    np.testing.assert_allclose(s["landmarks_2d"], pt3d[:, :2])
    np.testing.assert_allclose(s["landmarks_3d"][:, :2], pt3d[:, :2])
    z = -pt3d[:, 2]
    np.testing.assert_allclose(s["landmarks_3d"][:, 2], z - z[EYE_CORNERS].mean(), atol=1e-4)
    np.testing.assert_allclose(s["box"], [*pt3d[:, :2].min(0), *pt3d[:, :2].max(0)])
    assert "K" not in s and "t" not in s and "vertices" not in s


def test_landmarks_3d_follow_the_posed_bfm68_model(aflw_root, shared_assets):
    """The labels' model (R(Pose_Para) local * size + (x, y, 0)) and the loaded landmarks agree in 3D."""
    s = AFLW2000(aflw_root).read(0)
    mean, basis = bfm68_arrays(shared_assets)
    model = (mean + basis @ s["shape_params"]) @ s["R"].T * s["head_2d"][2] + [*s["head_2d"][:2], 0.0]
    model[:, 2] -= model[EYE_CORNERS, 2].mean()
    np.testing.assert_allclose(s["landmarks_3d"], model, atol=1e-2)


def test_head_box_contains_the_face(aflw_root):
    s = AFLW2000(aflw_root, box="head").read(0)
    lm = AFLW2000(aflw_root).read(0)["box"]
    b = s["box"]
    # holds the landmark box and reaches well above it (the forehead, which the 68 points miss)
    assert b[0] <= lm[0] and b[1] < lm[1] - 0.1 * (lm[3] - lm[1]) and b[2] >= lm[2] and b[3] >= lm[3]


def test_protocol_all_keeps_everything(aflw_root):
    ds = AFLW2000(aflw_root, protocol="all")
    assert [ds.record_id(i) for i in range(len(ds))] == ["aflw2000/image00002", "aflw2000/image00004"]
    assert ds.settings()["protocol"] == "all"
    with pytest.raises(ValueError, match="protocol"):
        AFLW2000(aflw_root, protocol="1970")


def _opal23(shared_assets: Path):
    names, angles = [], []
    with open(shared_assets / "protocols" / "opal23_aflw2000_ann.txt") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            f = line.strip().split(";")
            names.append(f[1])
            angles.append([float(v) for v in f[2:5]])  # yaw (opposite sign), pitch, roll in degrees
    return names, np.asarray(angles)


def test_protocol_1969_on_the_2000_real_labels(tmp_path, shared_assets):
    names, ypr = _opal23(shared_assets)
    assert len(names) == 2000
    keep = protocol_keep(ypr)
    assert keep.sum() == 1969
    removed = sorted(n for n, k in zip(names, keep) if not k)
    assert len(removed) == 31
    # the loader reads the same labels from Pose_Para (pitch, yaw, roll radians; opal23 yaw = -yaw)
    for name, (yaw, pitch, roll) in zip(names, ypr):
        pose = np.array([[*np.radians([pitch, -yaw, roll]), 200.0, 200.0, 0.0, 1e-3]], dtype=np.float32)
        scipy.io.savemat(tmp_path / f"{name}.mat", {"Pose_Para": pose})
    ds = AFLW2000(tmp_path)
    assert len(ds) == 1969 and sorted(ds.removed) == removed


def test_minus_one_landmarks(tmp_path, shared_assets):
    rng = np.random.default_rng(1)
    mat = write_sample(tmp_path, "image00008", rng, bfm68_arrays(shared_assets))
    pt3d = mat["pt3d_68"].copy()
    pt3d[:2, [0, 8, 16]] = -1.0  # three points at the (-1, -1) sentinel
    scipy.io.savemat(tmp_path / "image00008.mat", {**mat, "pt3d_68": pt3d})
    s = AFLW2000(tmp_path).read(0)
    validate_sample(s)
    assert "landmarks_2d" not in s and "landmarks_3d" not in s and "R" in s
    valid = np.delete(pt3d[:2].T.astype(np.float64), [0, 8, 16], axis=0)
    np.testing.assert_allclose(s["box"], [*valid.min(0), *valid.max(0)])
    assert s["box"][0] >= 0 and s["box"][1] >= 0  # the sentinel does not drag the box to (-1, -1)


def test_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(LayoutError) as err:
        AFLW2000(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "image00002.mat" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError) as err:
        AFLW2000(tmp_path / "empty")
    assert "empty" in str(err.value) and "Pose_Para" in str(err.value)
    with pytest.raises(LayoutError, match="no dataset root"):
        AFLW2000(None)


def test_parent_folder_is_accepted(tmp_path):
    (tmp_path / "AFLW2000").mkdir()
    write_sample(tmp_path / "AFLW2000", "image00002", np.random.default_rng(2))
    assert len(AFLW2000(tmp_path)) == 1


def test_corrupt_jpeg_names_the_file(aflw_root):
    (aflw_root / "image00002.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(RecordError, match="image00002.jpg"):
        AFLW2000(aflw_root).read(0)


def test_nan_labels_name_the_record(tmp_path):
    rng = np.random.default_rng(3)
    write_sample(tmp_path, "image00010", rng, Pose_Para=np.array([[np.nan, 0, 0, 1, 1, 1, 1e-3]], np.float32))
    ds = AFLW2000(tmp_path)  # the protocol filter reads the angles at construction; a NaN one is a bad record
    with pytest.raises(RecordError, match="image00010.*Pose_Para"):
        ds.read(0)
    write_sample(tmp_path, "image00010", rng, Pose_Para=np.array([[0, 0, 0, np.nan, 1, 1, 1e-3]], np.float32))
    ds = AFLW2000(tmp_path)
    with pytest.raises(RecordError, match="image00010.*Pose_Para"):
        ds.read(0)


def bad_angle_root(folder: Path, shared_assets: Path) -> Path:
    """Two good records, one beyond 99 deg, one NaN angle, one corrupt .mat (genuine format otherwise)."""
    rng, bfm = np.random.default_rng(4), bfm68_arrays(shared_assets)
    folder.mkdir(parents=True, exist_ok=True)
    write_sample(folder, "image00002", rng, bfm)
    write_sample(folder, "image00004", rng, bfm, pose_deg=(5.0, 100.0, 0.0))  # 1969 drops it
    write_sample(folder, "image00006", rng, bfm)
    write_sample(folder, "image00008", rng, bfm, Pose_Para=np.array([[0.1, np.nan, 0, TX, TY, TZ, SCALE]], np.float32))
    write_sample(folder, "image00010", rng, bfm)
    (folder / "image00010.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    return folder


def test_unreadable_angles_are_bad_records_not_a_bad_dataset(tmp_path, shared_assets):
    root = bad_angle_root(tmp_path / "raw", shared_assets)
    for protocol in ("1969", "all"):  # neither protocol can decide on them: both index them
        ds = AFLW2000(root, protocol=protocol)
        ids = [ds.record_id(i) for i in range(len(ds))]
        assert "aflw2000/image00008" in ids and "aflw2000/image00010" in ids
        assert ("aflw2000/image00004" in ids) == (protocol == "all")
    ds = AFLW2000(root)
    assert len(ds) == 4 and ds.removed == ["image00004"]
    with pytest.raises(RecordError, match=r"image00008\.mat.*Pose_Para"):
        ds.read(2)
    with pytest.raises(RecordError, match=r"cannot read MATLAB file .*image00010\.mat"):
        ds.read(3)
    validate_sample(ds.read(0))


@pytest.mark.parametrize("raw", [False, True])
def test_on_error_skip_leaves_out_nan_angle_and_corrupt_mat(tmp_path, shared_assets, raw):
    root = bad_angle_root(tmp_path / "raw", shared_assets)
    kw = {"cache_dir": tmp_path / "cache", "working_size": 32, "raw": raw}
    with pytest.raises(RecordError, match=r"image00008\.mat"):  # raise: the first bad record, by file
        ds = PreparedDataset(AFLW2000(root), on_error="raise", **kw)
        ds.prepare()
        [ds[i] for i in range(len(ds))]
    ds = PreparedDataset(AFLW2000(root), on_error="skip", **kw)
    ds.prepare()
    got = [ds[i]["sample_id"] for i in range(len(ds))]
    if raw:  # on the fly: a bad record is replaced by the next one and counted
        assert set(got) == {"aflw2000/image00002", "aflw2000/image00006"} and ds._raw_skips == 3  # 08, 10; 10
        return
    assert got == ["aflw2000/image00002", "aflw2000/image00006"]
    rep = ds.report()
    assert rep["records"] == 2 and rep["source_records"] == 4 and rep["skipped"] == 2
    assert [rid for rid, _ in ds.skipped] == ["aflw2000/image00008", "aflw2000/image00010"]
    assert "Pose_Para" in ds.skipped[0][1] and "image00010.mat" in ds.skipped[1][1]
