"""ARKitFace loader on fixtures written in the distributed format (CSV lists, ``*_ar.jpg``, ``*_info.npz``).

Expected labels are derived by hand from the OpenGL data, independently of the loader's frame change:
landmarks through the OpenGL pipeline (row-vector ``R_t``, projection matrix, viewport) and the rotation from
``F Ry(a) F = Ry(-a)``.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hpe_bench import geometry as G
from hpe_bench.assets import arkit_face
from hpe_bench.data.arkitface import ARKitFace
from hpe_bench.data.raw import LayoutError, RecordError
from hpe_bench.schema import validate_sample

W, H = 320, 240
ASSET = arkit_face()
T_GL = np.array([0.05, 0.02, -0.5])  # OpenGL camera: in front means z < 0; y up


def row_vector(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    M = np.eye(4, dtype=np.float32)
    M[:3, :3], M[3, :3] = R.T, t
    return M


def write_record(root, split, subject, action, img_id, R_t, verts=None, flat=True, image=None):
    img_dir = root / "image" if flat else root / f"ARKitFace_image_{split}" / "image"
    info_dir = root / "info" if flat else root / f"ARKitFace_info_{split}" / "info"
    (img_dir / subject / action).mkdir(parents=True, exist_ok=True)
    (info_dir / subject / action).mkdir(parents=True, exist_ok=True)
    if verts is None:  # the ARKit face frame is F (diag(1, -1, -1)) of the package head frame of the asset
        verts = (ASSET["mean_vertices"] * np.array([1, -1, -1])).astype(np.float32)
    img = np.full((H, W, 3), 120, np.uint8) if image is None else image
    cv2.imwrite(str(img_dir / subject / action / f"{img_id}_ar.jpg"), img)
    np.savez(info_dir / subject / action / f"{img_id}_info.npz", verts=verts, R_t=R_t.astype(np.float32))


def write_list(root, split, rows):
    lines = ["subject_id,facial_action,img_id"] + [",".join(r) for r in rows]
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def dataset(tmp_path):
    R_gl = Rotation.from_euler("y", 30, degrees=True).as_matrix()  # +30 deg about OpenGL's up axis
    write_record(tmp_path, "train", "001234", "01_Neutral", "1616212233525", row_vector(R_gl, T_GL))
    write_record(tmp_path, "train", "001234", "02_Smile", "0007", row_vector(np.eye(3), T_GL))
    write_list(tmp_path, "train", [("001234", "01_Neutral", "1616212233525"), ("001234", "02_Smile", "0007")])
    return ARKitFace(tmp_path, split="train")


def opengl_pipeline(verts_gl: np.ndarray, R_t: np.ndarray, P: np.ndarray):
    """Pixels and OpenCV depth of model points through the OpenGL pipeline (row vectors), written out by hand."""
    hom = np.concatenate([verts_gl, np.ones((len(verts_gl), 1))], 1)
    cam = hom @ R_t
    clip = cam @ P
    ndc = clip[:, :3] / clip[:, 3:4]
    u = (ndc[:, 0] + 1) * W / 2
    v = (1 - ndc[:, 1]) * H / 2  # NDC y up, image rows down
    return np.stack([u, v], 1), -cam[:, 2]


def test_pose_in_opencv_frame(dataset):
    s = dataset.read(0)
    validate_sample(s)
    # F Ry(a) F = Ry(-a) (F = diag(1, -1, -1) negates the x-z plane's off-diagonal terms), t -> (x, -y, -z)
    np.testing.assert_allclose(s["R"], Rotation.from_euler("y", -30, degrees=True).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(s["t"], [0.05, -0.02, 0.5], atol=1e-6)
    # the nose turned toward image right (OpenGL +x): negative yaw under both Euler rules
    ypr = G.matrix_to_euler(torch.as_tensor(s["R"], dtype=torch.float64), "trg")
    np.testing.assert_allclose(ypr.numpy(), [-30, 0, 0], atol=1e-4)
    # head frame vertices are the asset's (nose toward -z, chin toward +y)
    np.testing.assert_allclose(s["vertices"], ASSET["mean_vertices"], atol=1e-6)
    assert s["topology"] == "arkit1220" and s["dataset"] == "arkitface"
    assert s["sample_id"] == "arkitface/001234/01_Neutral/1616212233525"


def test_intrinsics_from_opengl_projection(dataset):
    K = dataset.read(0)["K"]
    np.testing.assert_allclose(K, [[1.574437 * W / 2, 0, W / 2], [0, 1.574437 * H / 2, H / 2], [0, 0, 1]], rtol=1e-6)


@pytest.mark.parametrize("index", [0, 1])
def test_landmarks_match_opengl_projection(dataset, index):
    s = dataset.read(index)
    _, info = dataset.paths(index)
    data = np.load(info)
    uv, depth = opengl_pipeline(data["verts"].astype(np.float64), data["R_t"].astype(np.float64),
                                ASSET["arkit_projection"].astype(np.float64))
    kp = ASSET["keypoints_68"]
    np.testing.assert_allclose(s["landmarks_2d"], uv[kp], atol=1e-3)
    # projected 3D landmarks land on the 2D ones; z = depth relative to the head centre, in pixels
    np.testing.assert_allclose(s["landmarks_3d"][:, :2], uv[kp], atol=1e-3)
    tz = -T_GL[2]
    np.testing.assert_allclose(s["landmarks_3d"][:, 2], (depth[kp] - tz) * s["K"][0, 0] / tz, atol=1e-2)
    # TRG box: centre of the landmark extent, side 1.5 x its larger side
    lo, hi = uv[kp].min(0), uv[kp].max(0)
    c, half = (lo + hi) / 2, 0.75 * (hi - lo).max()
    np.testing.assert_allclose(s["box"], [c[0] - half, c[1] - half, c[0] + half, c[1] + half], atol=1e-3)


def test_distributed_layout_and_string_ids(tmp_path):
    write_record(tmp_path, "test", "000042", "05_Blink", "0001", row_vector(np.eye(3), T_GL), flat=False)
    write_list(tmp_path, "test", [("000042", "05_Blink", "0001")])
    ds = ARKitFace(tmp_path, split="test")
    assert len(ds) == 1 and ds.record_id(0) == "000042/05_Blink/0001"  # leading zeros kept
    np.testing.assert_allclose(ds.read(0)["R"], np.eye(3), atol=1e-6)


def test_missing_root_and_layout(tmp_path):
    with pytest.raises(LayoutError, match="no dataset root"):
        ARKitFace(None)
    with pytest.raises(LayoutError) as err:
        ARKitFace(tmp_path / "nope", split="train")
    assert "nope" in str(err.value) and "_info.npz" in str(err.value)
    with pytest.raises(LayoutError, match="train.csv"):
        ARKitFace(tmp_path, split="train")
    write_list(tmp_path, "train", [("1", "a", "2")])
    with pytest.raises(LayoutError, match="image"):
        ARKitFace(tmp_path, split="train")
    (tmp_path / "image").mkdir()
    (tmp_path / "info").mkdir()
    (tmp_path / "train.csv").write_text("subject,action,id\n1,a,2\n")
    with pytest.raises(LayoutError, match="subject_id"):
        ARKitFace(tmp_path, split="train")


def test_bad_records_name_their_file(tmp_path):
    write_record(tmp_path, "train", "1", "a", "ok", row_vector(np.eye(3), T_GL))
    write_record(tmp_path, "train", "1", "a", "corrupt", row_vector(np.eye(3), T_GL))
    (tmp_path / "image/1/a/corrupt_ar.jpg").write_bytes(b"not a jpeg")
    bad = row_vector(np.eye(3), T_GL)
    bad[3, 1] = np.nan
    write_record(tmp_path, "train", "1", "a", "nan", bad)
    write_record(tmp_path, "train", "1", "a", "behind", row_vector(np.eye(3), -T_GL))
    write_list(tmp_path, "train", [("1", "a", n) for n in ("ok", "corrupt", "nan", "behind", "absent")])
    ds = ARKitFace(tmp_path, split="train")
    validate_sample(ds.read(0))
    with pytest.raises(RecordError, match="corrupt_ar.jpg"):
        ds.read(1)
    with pytest.raises(RecordError, match=r"nan_info\.npz.*NaN"):
        ds.read(2)
    with pytest.raises(RecordError, match="behind_info.npz"):
        ds.read(3)
    with pytest.raises(RecordError, match="absent_ar.jpg"):
        ds.read(4)
