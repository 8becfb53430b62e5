"""Face Synthetics loader on fixtures in the distributed format ({id:06d}.png, _ldmks.txt, _seg.png)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from hpe_bench.data.facesynthetics import FaceSynthetics
from hpe_bench.data.raw import LayoutError, RecordError
from hpe_bench.schema import validate_sample

S = 128


def write_record(root, i, face=None, nose=None, points=None):
    """``face``/``nose``: inclusive pixel ranges (x0, y0, x1, y1) painted as skin (1) / nose (2) on hair (13)."""
    seg = np.full((S, S), 13, np.uint8)
    seg[:8] = 0  # background
    if face is not None:
        seg[face[1]:face[3] + 1, face[0]:face[2] + 1] = 1
    if nose is not None:
        seg[nose[1]:nose[3] + 1, nose[0]:nose[2] + 1] = 2
    cv2.imwrite(str(root / f"{i:06d}_seg.png"), seg)
    cv2.imwrite(str(root / f"{i:06d}.png"), np.full((S, S, 3), 100, np.uint8))
    if points is None:
        points = np.stack([np.linspace(10, 90, 70), np.linspace(20, 100, 70)], 1) + i
    (root / f"{i:06d}_ldmks.txt").write_text("".join(f"{x:.3f} {y:.3f}\n" for x, y in points))


@pytest.fixture
def root(tmp_path):
    write_record(tmp_path, 0, face=(10, 20, 59, 79), nose=(30, 40, 70, 50))  # nose sticks out to x = 70
    write_record(tmp_path, 1, face=(5, 5, 30, 60))  # 26 px wide: dropped
    write_record(tmp_path, 2, face=(0, 0, 32, 32))  # exactly 33 px: kept
    write_record(tmp_path, 3, face=(40, 40, 71, 100))  # 32 px wide: dropped (side <= 32)
    write_record(tmp_path, 4)  # no skin at all: dropped
    write_record(tmp_path, 5, face=(20, 20, 100, 100))
    (tmp_path / "README.txt").write_text("not an image")
    return tmp_path


def test_box_landmarks_and_drops(root, tmp_path):
    ds = FaceSynthetics(root, split="all", index_dir=tmp_path / "idx")
    assert [ds.record_id(i) for i in range(len(ds))] == ["000000", "000002", "000005"]
    assert ds.num_dropped == 3 and ds.dropped_ids == ["000001", "000003", "000004"]
    s = ds.read(0)
    validate_sample(s)
    # skin columns 10..59 and nose columns 30..70, rows 20..79: outer pixel edges
    np.testing.assert_array_equal(s["box"], [9.5, 19.5, 70.5, 79.5])
    expected = np.stack([np.linspace(10, 90, 70), np.linspace(20, 100, 70)], 1)[:68]
    np.testing.assert_allclose(s["landmarks_2d"], expected, atol=1e-3)
    assert "R" not in s and "K" not in s and "landmarks_3d" not in s
    np.testing.assert_allclose(s["K_fallback"], [[2 * S, 0, S / 2], [0, 2 * S, S / 2], [0, 0, 1]])
    assert s["sample_id"] == "facesynthetics/000000" and s["dataset"] == "facesynthetics"
    assert len(list((tmp_path / "idx").glob("facesynthetics-index-*.npz"))) == 1
    again = FaceSynthetics(root, split="all", index_dir=tmp_path / "idx")  # from the index
    np.testing.assert_array_equal(again.boxes, ds.boxes)


def test_splits_by_id(root):
    train = FaceSynthetics(root, split="train", val_start=3)
    val = FaceSynthetics(root, split="val", val_start=3)
    assert [train.record_id(i) for i in range(len(train))] == ["000000", "000002"] and train.num_dropped == 1
    assert [val.record_id(i) for i in range(len(val))] == ["000005"] and val.num_dropped == 2
    with pytest.raises(ValueError, match="split"):
        FaceSynthetics(root, split="test")


def test_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match="no dataset root"):
        FaceSynthetics(None)
    with pytest.raises(LayoutError, match="absent"):
        FaceSynthetics(tmp_path / "absent")
    with pytest.raises(LayoutError, match=r"_ldmks\.txt"):
        FaceSynthetics(tmp_path)


def test_bad_records_name_their_file(tmp_path):
    for i in range(4):
        write_record(tmp_path, i, face=(10, 10, 90, 90))
    (tmp_path / "000001.png").write_bytes(b"garbage")
    (tmp_path / "000002_ldmks.txt").write_text("1 2\n" * 69 + "nan 3\n")
    (tmp_path / "000003_seg.png").write_bytes(b"garbage")
    ds = FaceSynthetics(tmp_path, split="all")
    assert len(ds) == 4 and ds.num_dropped == 0  # an unreadable segmentation is not a silent drop
    validate_sample(ds.read(0))
    with pytest.raises(RecordError, match=r"000001\.png"):
        ds.read(1)
    with pytest.raises(RecordError, match=r"000002_ldmks\.txt.*NaN"):
        ds.read(2)
    with pytest.raises(RecordError, match=r"000003_seg\.png"):
        ds.read(3)
    (tmp_path / "000000_ldmks.txt").write_text("1 2\n" * 68)
    with pytest.raises(RecordError, match=r"000000_ldmks\.txt.*\(70, 2\)"):
        ds.read(0)
