"""BIWI loader on fixtures written as distributed (PNG frames, text pose/calibration files, a tiny .obj),
and the rotation protocol pinned on the real opal23 annotation file."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hpe_bench import geometry as G
from hpe_bench.data.biwi import BIWI, default_annotation, read_opal23_biwi
from hpe_bench.data.raw import LayoutError, RecordError
from hpe_bench.schema import validate_sample

# values of a real rgb.cal (sequence 12, as quoted by the HF dataset card): K, distortion, R_ext, T_ext (mm), size
RGB_CAL = ("517.679 0 320 \n0 517.679 240.5 \n0 0 1 \n\n0 0 0 0 \n\n"
           "0.999947 0.00432361 0.00929419 \n-0.00446314 0.999877 0.0150443 \n-0.009228 -0.015085 0.999844 \n\n"
           "-24.0198 5.8896 -13.2308 \n\n640 480 \n")
K_CAL = np.array([[517.679, 0, 320], [0, 517.679, 240.5], [0, 0, 1]])
R_EXT = np.array([[0.999947, 0.00432361, 0.00929419], [-0.00446314, 0.999877, 0.0150443],
                  [-0.009228, -0.015085, 0.999844]])
T_EXT = np.array([-24.0198, 5.8896, -13.2308])
IDENTITY_CAL = "517.679 0 320 \n0 517.679 240.5 \n0 0 1 \n\n0 0 0 0 \n\n1 0 0 \n0 1 0 \n0 0 1 \n\n0 0 0 \n\n640 480 \n"
# template as stored: mm, y up, nose toward +z; x toward the subject's left
NOSE, CHIN, LEFT_EYE, RIGHT_EYE, CROWN = (0, 0, 100), (0, -90, 60), (35, 30, 70), (-35, 30, 70), (0, 120, 0)
OBJ = "".join(f"v {x} {y} {z}\n" for x, y, z in (NOSE, CHIN, LEFT_EYE, RIGHT_EYE, CROWN)) + "f 1 2 3\nf 1 3 4\nf 3 4 5\n"


def pose_text(R: np.ndarray, T) -> str:
    rows = [" ".join(f"{v:g}" for v in r) + " " for r in R]
    return "\n".join(rows) + "\n\n" + " ".join(f"{v:g}" for v in T) + " \n"


def write_frame(seq_dir, n, R=np.eye(3), T=(20.0, -30.0, 900.0), image=True):
    seq_dir.mkdir(parents=True, exist_ok=True)
    if image:
        cv2.imwrite(str(seq_dir / f"frame_{n:05d}_rgb.png"), np.full((480, 640, 3), 90, np.uint8))
    (seq_dir / f"frame_{n:05d}_pose.txt").write_text(pose_text(R, T))


R_HEAD = Rotation.from_euler("XYZ", [10, -25, 5], degrees=True).as_matrix().round(6)
T_HEAD = (43.4019, -30.7038, 906.864)


@pytest.fixture
def official(tmp_path):
    """``hpdb/`` as in kinect_head_pose_db.tgz: two sequences, a pose-less frame, templates."""
    hpdb = tmp_path / "hpdb"
    write_frame(hpdb / "01", 3, R_HEAD, T_HEAD)
    write_frame(hpdb / "01", 4)
    cv2.imwrite(str(hpdb / "01" / "frame_00005_rgb.png"), np.zeros((480, 640, 3), np.uint8))  # no pose file
    write_frame(hpdb / "02", 0)
    for seq, cal in (("01", RGB_CAL), ("02", IDENTITY_CAL)):
        (hpdb / seq / "rgb.cal").write_text(cal)
        (hpdb / f"{seq}.obj").write_text(OBJ)
    return tmp_path


def write_annotation(path, rows):
    lines = ["#;image;tl_x;tl_y;br_x;br_y;yaw;pitch;roll;"]
    lines += [f"kinect_head_pose_db/{img};{';'.join(str(v) for v in vals)}" for img, vals in rows]
    path.write_text("\n".join(lines) + "\n")


def test_6dof_pose_moved_into_rgb_camera(official):
    ds = BIWI(official, protocol="6dof")
    assert [ds.record_id(i) for i in range(len(ds))] == ["01/frame_00003", "01/frame_00004", "02/frame_00000"]
    assert ds.euler_rule == "trg"
    s = ds.read(0)
    validate_sample(s)
    # hand-derived: v_rgb = R_ext (R_head v + T_head) + T_ext, mm -> m
    np.testing.assert_allclose(s["R"], R_EXT @ R_HEAD, atol=2e-5)
    np.testing.assert_allclose(s["t"], (R_EXT @ np.array(T_HEAD) + T_EXT) / 1000, atol=1e-6)
    np.testing.assert_allclose(s["K"], K_CAL, rtol=1e-6)
    assert s["sample_id"] == "biwi/01/frame_00003" and s["topology"] == "biwi_01"
    # box = tight box of the template projected with an independent implementation (cv2.projectPoints)
    verts_obj = np.array([NOSE, CHIN, LEFT_EYE, RIGHT_EYE, CROWN], np.float64)
    rvec, _ = cv2.Rodrigues(R_EXT @ R_HEAD)
    F = np.diag([1.0, -1.0, -1.0])
    uv, _ = cv2.projectPoints(verts_obj @ F, rvec, R_EXT @ np.array(T_HEAD) + T_EXT, K_CAL, None)
    uv = uv[:, 0]
    np.testing.assert_allclose(s["box"], [*uv.min(0), *uv.max(0)], atol=0.05)


def test_template_in_head_frame(official):
    """Stored with y up and the nose toward +z; in the head frame the nose points to -z and the chin to +y."""
    s = BIWI(official, protocol="6dof").read(1)  # R_head = I, R_ext = I: the face looks at the camera
    v = s["vertices"]
    np.testing.assert_allclose(v[0], [0, 0, -0.1])  # nose tip toward -z
    np.testing.assert_allclose(v[1], [0, 0.09, -0.06])  # chin toward +y
    np.testing.assert_allclose(v[2], [0.035, -0.03, -0.07])  # the subject's left eye stays at +x
    cam = v + s["t"]
    uv = cam[:, :2] / cam[:, 2:] * 517.679 + [320, 240.5]
    assert cam[0, 2] < s["t"][2]  # nose tip nearer to the camera than the head centre
    assert uv[1, 1] > uv[0, 1] > uv[4, 1]  # chin below the nose below the crown in the image
    assert uv[2, 0] > uv[3, 0]  # the subject's left eye on the image right (facing the camera)


def test_kaggle_mirror_and_root_variants(tmp_path):
    faces = tmp_path / "faces_0"
    write_frame(faces / "07", 12)
    (faces / "07" / "rgb.cal").write_text(IDENTITY_CAL)
    (faces / "07.obj").write_text(OBJ)
    for root in (tmp_path, faces):
        ds = BIWI(root, protocol="6dof")
        assert len(ds) == 1 and ds.data_dir == faces
        np.testing.assert_allclose(ds.read(0)["t"], [0.02, -0.03, 0.9])


def test_rotation_protocol_boxes_and_labels(official, tmp_path):
    ann = tmp_path / "ann.txt"
    write_annotation(ann, [("01/frame_00003_rgb.png", (270, 177, 414, 355, -3.29, 7.6, -1.56)),
                           ("02/frame_00000_rgb.png", (260, 170, 400, 350, 20.0, -10.0, 5.0))])
    ds = BIWI(official, protocol="rotation", annotation=ann)
    assert len(ds) == 2 and ds.euler_rule == "opnet"
    s = ds.read(0)
    validate_sample(s)
    np.testing.assert_array_equal(s["box"], [270, 177, 414, 355])
    np.testing.assert_allclose(s["R"], R_EXT @ R_HEAD, atol=2e-5)  # default labels: the pose files
    a = BIWI(official, protocol="rotation", annotation=ann, rotation_labels="annotation").read(1)
    # opal23 yaw has the opposite sign to the "opnet" rule (as measured on AFLW2000-3D; unverified for BIWI)
    expected = Rotation.from_euler("XYZ", [10.0, -20.0, 5.0], degrees=True).as_matrix()
    np.testing.assert_allclose(a["R"], expected, atol=1e-6)
    assert "t" not in a and "vertices" not in a
    ypr = G.matrix_to_euler(torch.as_tensor(a["R"], dtype=torch.float64), "opnet")
    np.testing.assert_allclose(ypr.numpy(), [-20.0, -10.0, 5.0], atol=1e-6)


def test_rotation_protocol_count_on_real_annotation(shared_assets):
    path = shared_assets / "protocols" / "opal23_biwi_ann.txt"
    ann = read_opal23_biwi(path)
    assert len(ann) == 13219
    assert ann["image"].str.match(r"kinect_head_pose_db/\d\d/frame_\d{5}_rgb\.png$").all()
    assert ann["image"].str.split("/").str[1].nunique() == 24 and not ann["image"].duplicated().any()
    assert ((ann["x1"] > ann["x0"]) & (ann["y1"] > ann["y0"])).all()
    # the packaged copy is the same file
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(default_annotation()) == digest(path)


def test_missing_root_and_layout(tmp_path, official):
    with pytest.raises(LayoutError, match="no dataset root"):
        BIWI(None)
    with pytest.raises(LayoutError) as err:
        BIWI(tmp_path / "absent")
    assert "absent" in str(err.value) and "faces_0" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="hpdb/NN/frame_XXXXX_rgb.png"):
        BIWI(tmp_path / "empty")
    # the real protocol lists 13,219 frames from 01/frame_00003 on; the fixture stops at 01/frame_00005
    with pytest.raises(LayoutError, match=r"13219 records of the rotation protocol .* first '01/frame_00006_rgb.png'"):
        BIWI(official, protocol="rotation")
    (official / "hpdb" / "02.obj").unlink()
    with pytest.raises(LayoutError, match="02.obj"):
        BIWI(official, protocol="6dof")
    with pytest.raises(ValueError, match="protocol"):
        BIWI(official, protocol="70/30")


def test_bad_records(official):
    hpdb = official / "hpdb" / "01"
    (hpdb / "frame_00004_rgb.png").write_bytes(b"\x89PNG broken")
    (official / "hpdb" / "02" / "frame_00000_pose.txt").write_text(pose_text(np.eye(3), (np.nan, 0, 900)))
    ds = BIWI(official, protocol="6dof")
    validate_sample(ds.read(0))
    with pytest.raises(RecordError, match="frame_00004_rgb.png"):
        ds.read(1)
    with pytest.raises(RecordError, match=r"'02/frame_00000'.*NaN"):
        ds.read(2)
    (hpdb / "frame_00003_pose.txt").write_text(pose_text(2 * np.eye(3), T_HEAD))
    with pytest.raises(RecordError, match="no rotation"):
        ds.read(0)


def test_70_30_protocol_splits_by_sequence(tmp_path):
    """FSA-Net's protocol 2 with hpe_bench's fixed split: test = every third sequence, train = the other 16."""
    from hpe_bench.data.biwi import SEQUENCES_70_30
    from hpe_bench.protocols import get_protocol
    assert SEQUENCES_70_30["test"] == ("03", "06", "09", "12", "15", "18", "21", "24")
    assert len(SEQUENCES_70_30["train"]) == 16 and not set(SEQUENCES_70_30["train"]) & set(SEQUENCES_70_30["test"])
    assert sorted(SEQUENCES_70_30["train"] + SEQUENCES_70_30["test"]) == [f"{i:02d}" for i in range(1, 25)]
    entry = get_protocol("biwi_70_30")  # the registry states the same split
    assert entry.split == {k: tuple(v) for k, v in SEQUENCES_70_30.items()} and entry.euler_rule == "opnet"
    hpdb = tmp_path / "hpdb"
    for seq, frames in (("01", (3, 4)), ("03", (0,)), ("06", (7, 8)), ("24", (1,))):
        for n in frames:
            write_frame(hpdb / seq, n, R_HEAD, T_HEAD)
        (hpdb / seq / "rgb.cal").write_text(RGB_CAL)
        (hpdb / f"{seq}.obj").write_text(OBJ)
    test = BIWI(tmp_path, split="test", protocol="70_30")
    train = BIWI(tmp_path, split="train", protocol="70_30")
    assert [test.record_id(i) for i in range(len(test))] == ["03/frame_00000", "06/frame_00007", "06/frame_00008",
                                                             "24/frame_00001"]
    assert [train.record_id(i) for i in range(len(train))] == ["01/frame_00003", "01/frame_00004"]
    assert test.euler_rule == "opnet" and test.settings()["protocol"] == "70_30"
    s = test.read(0)
    validate_sample(s)
    np.testing.assert_allclose(s["R"], R_EXT @ R_HEAD, atol=2e-5)  # labels as in the 6dof protocol
    np.testing.assert_allclose(s["t"], (R_EXT @ np.array(T_HEAD) + T_EXT) / 1000, atol=1e-6)
    with pytest.raises(ValueError, match="splits"):
        BIWI(tmp_path, split="val", protocol="70_30")
    (hpdb / "24.obj").unlink()
    with pytest.raises(LayoutError, match="24.obj"):
        BIWI(tmp_path, split="test", protocol="70_30")
    only_train = tmp_path / "only_train"
    write_frame(only_train / "01", 0)
    (only_train / "01" / "rgb.cal").write_text(RGB_CAL)
    with pytest.raises(LayoutError, match="no frame with a pose file in the test sequences"):
        BIWI(only_train, split="test", protocol="70_30")
