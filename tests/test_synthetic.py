"""The embedded synthetic dataset: scene ranges, label/image consistency, determinism, the HDF5 cache."""
from __future__ import annotations

import os
import pickle
import warnings

import h5py
import numpy as np
import pytest
import torch

from hpe_bench import geometry as G
from hpe_bench.data import h5cache
from hpe_bench.data.synthetic import SyntheticDataset
from hpe_bench.data.synthetic import raster
from hpe_bench.data.synthetic import scene as R
from hpe_bench.schema import collate, validate_sample

SIZE = 96  # small images keep the cache tests fast


def _dataset(tmp_path, **kw) -> SyntheticDataset:
    args = dict(split="test", num_samples=10, seed=3, image_size=SIZE, cache_dir=str(tmp_path), workers=1)
    args.update(kw)
    return SyntheticDataset(**args)


def _read_all(path) -> dict[str, list | np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in f if k != "images"}
        out["images"] = [bytes(b) for b in f["images"][()]]
    return out


def test_unknown_split_names_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="train.*test.*val|allowed"):
        SyntheticDataset("validation", cache_dir=str(tmp_path))


def test_scene_ranges_and_pose_rule():
    scenes = [R.sample_scene(0, "train", i, 128) for i in range(300)]
    ypr = np.stack([s.ypr_deg for s in scenes])
    limits = np.array(R.POSE_LIMITS_DEG)
    assert (np.abs(ypr) <= limits).all()
    assert (np.abs(ypr).max(0) > 0.9 * limits).all(), "pose ranges are not covered"
    # the documented rule defines the angles: R = euler_to_matrix(ypr, "trg") and back
    Rs = torch.from_numpy(np.stack([s.R for s in scenes]))
    back = G.matrix_to_euler(Rs, R.POSE_RULE).numpy()
    np.testing.assert_allclose(back, ypr, atol=1e-6)
    np.testing.assert_allclose(Rs.transpose(1, 2) @ Rs, np.broadcast_to(np.eye(3), Rs.shape), atol=1e-9)
    depth = np.array([s.t[2] for s in scenes])
    assert depth.min() >= R.DEPTH_RANGE_M[0] - 1e-9 and depth.max() <= R.DEPTH_RANGE_M[1] + 1e-9
    fov = np.array([s.fov_x_deg for s in scenes])
    assert fov.min() >= 40 and fov.max() <= 90 and fov.max() - fov.min() > 40
    f = np.array([s.K[0, 0] for s in scenes])
    np.testing.assert_allclose(f, 64 / np.tan(np.radians(fov) / 2), rtol=1e-5)  # horizontal fov of a 128 image
    pp = np.stack([s.K[:2, 2] for s in scenes]) - 63.5
    assert np.abs(pp).max() <= R.PRINCIPAL_OFFSET * 128 + 1e-6 and np.abs(pp).max() > 1.0
    for s in scenes:  # whole face inside the image with the margin, off-centre positions happen
        box = R.scene_labels(s)["box"]
        assert box[0] >= R.BOX_MARGIN_PX - 1e-3 and box[2] <= 127 - R.BOX_MARGIN_PX + 1e-3, box
        assert box[1] >= R.BOX_MARGIN_PX - 1e-3 and box[3] <= 127 - R.BOX_MARGIN_PX + 1e-3, box
    centres = np.stack([s.uv.mean(0) for s in scenes])
    assert centres.min() < 30 and centres.max() > 98
    # identity varies: per-axis extents differ between samples beyond 5 %
    ext = np.stack([np.ptp(s.vertices, 0) for s in scenes[:50]])
    assert (ext.max(0) / ext.min(0) > 1.1).all()
    # splits use different streams
    assert not np.allclose(R.sample_scene(0, "val", 0, 128).R, R.sample_scene(0, "train", 0, 128).R)


def test_labels_agree_with_rendered_image():
    kp = R.mesh()["keypoints"]
    normals = R.mesh()["normals"]
    nose_checked = 0
    for i in range(16):
        image, mask, lab = raster.make_sample(1, "train", i, 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
        assert mask.sum() > 10
        K, Rm, t = (torch.from_numpy(lab[k]).double() for k in ("K", "R", "t"))
        V = torch.from_numpy(lab["vertices"]).double()
        uv = G.project_points(G.transform_points(V[kp], Rm, t), K).numpy()
        assert np.abs(uv - lab["landmarks_2d"]).max() < 0.5
        np.testing.assert_allclose(lab["landmarks_3d"][:, :2], lab["landmarks_2d"], atol=1e-3)
        ys, xs = np.nonzero(mask)  # rendered face pixels lie inside the box label (1 px slack)
        x0, y0, x1, y1 = lab["box"]
        assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1
        # nose tip facing the camera -> it is the nearest point there, so a face pixel must be under it
        nose_cam = G.transform_points(V[kp[R.NOSE_TIP]][None], Rm, t)[0].numpy()
        facing = -(lab["R"] @ normals[kp[R.NOSE_TIP]]) @ (nose_cam / np.linalg.norm(nose_cam))
        if facing > 0.3:
            x, y = np.rint(lab["landmarks_2d"][R.NOSE_TIP]).astype(int)
            assert mask[y, x], f"sample {i}: no face pixel under the visible nose tip"
            nose_checked += 1
    assert nose_checked >= 4


def test_cache_samples_schema_and_exact_determinism(tmp_path):
    ds = _dataset(tmp_path / "a", workers=2)
    path = ds.prepare()
    assert path.name.startswith("test-10-") and path.parent.name == "synthetic"
    samples = [ds[i] for i in range(len(ds))]
    for s in samples:
        validate_sample(s, where="synthetic")
        assert s["dataset"] == "synthetic" and s["topology"] == "arkit1220" and "shape_params" not in s
        assert s["vertices"].shape == (1220, 3) and s["landmarks_3d"].shape == (68, 3)
    assert samples[7]["sample_id"] == "synthetic/test/000007"
    batch = collate(samples[:4])
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["has_K"].all() and not batch["has_shape_params"].any()
    # the cache holds exactly what make_sample renders (JPEG bytes identical, labels bit-equal) ...
    image, _, lab = raster.make_sample(3, "test", 7, SIZE)
    with h5py.File(path, "r") as f:
        assert bytes(f["images"][7]) == h5cache.encode_jpeg(image, 95).tobytes()
    for k, v in lab.items():
        np.testing.assert_array_equal(samples[7][k], v)
    # ... decoded close to the render (JPEG q95 of a noisy image; colour order: test_jpeg_helpers_keep_rgb_order)
    assert np.abs(samples[7]["image"].astype(int) - image).mean() < 8
    assert np.abs(samples[7]["image"].mean((0, 1)) - image.mean((0, 1))).max() < 2
    # same seed in one process vs a pool of two: identical files' content; another seed differs
    one = _read_all(_dataset(tmp_path / "b", workers=1).prepare())
    two = _read_all(path)
    assert one["images"] == two["images"]
    for k in ("K", "R", "t", "box", "landmarks_2d", "landmarks_3d", "vertices"):
        np.testing.assert_array_equal(one[k], two[k])
    other = _read_all(_dataset(tmp_path / "c", seed=4).prepare())
    assert not np.allclose(other["R"], one["R"]) and other["images"][0] != one["images"][0]
    assert pickle.loads(pickle.dumps(ds))[0]["sample_id"] == "synthetic/test/000000"  # picklable while open


def test_getitem_prepares_lazily_and_checks_index(tmp_path):
    ds = _dataset(tmp_path, num_samples=4)
    assert not ds.path.exists()
    assert ds[-1]["sample_id"] == "synthetic/test/000003"
    assert ds.path.exists()
    with pytest.raises(IndexError):
        ds[4]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "incomplete"])
def test_invalid_cache_is_reported_and_regenerated(tmp_path, damage):
    ds = _dataset(tmp_path, num_samples=6)
    path = ds.prepare()
    good = _read_all(path)
    ds.close()
    if damage == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "garbage":
        path.write_bytes(b"this is not an HDF5 file" * 100)
    else:
        with h5py.File(path, "a") as f:
            del f.attrs["complete"]
    fresh = _dataset(tmp_path, num_samples=6)
    with pytest.warns(h5cache.CacheWarning, match=path.name):
        assert fresh.prepare() == path
    again = _read_all(path)
    assert again["images"] == good["images"]
    np.testing.assert_array_equal(again["vertices"], good["vertices"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now valid: no warning, no regeneration
        fresh.prepare()


def test_interrupted_generation_leaves_no_file(tmp_path, monkeypatch):
    real = raster.render_scene

    def flaky(scene):
        if scene.index == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of generation
        return real(scene)

    monkeypatch.setattr(raster, "render_scene", flaky)
    ds = _dataset(tmp_path, num_samples=8)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare()
    assert not ds.path.exists()
    assert list(ds.path.parent.iterdir()) == []  # the temporary file is gone too


def test_check_cache_reports_wrong_settings(tmp_path):
    path = tmp_path / "x.h5"
    with h5cache.atomic_h5(path, {"settings": '{"a": 1}'}) as f:
        f.create_dataset("images", (3,), dtype=np.float32)
    assert h5cache.check_cache(path, {"settings": '{"a": 1}'}, {"images": 3}) is None
    assert "settings" in h5cache.check_cache(path, {"settings": '{"a": 2}'}, {"images": 3})
    assert "rows" in h5cache.check_cache(path, {"settings": '{"a": 1}'}, {"images": 4})


def test_jpeg_helpers_keep_rgb_order():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 200  # pure red in RGB
    out = h5cache.decode_jpeg(h5cache.encode_jpeg(img))
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10
    with pytest.raises(ValueError, match="somefile"):
        h5cache.decode_jpeg(b"garbage", where="somefile")


def test_batched_sampling_matches_one_by_one():
    # generation samples whole chunks at once; every scene and label must equal the one-by-one result
    scenes, labels = R.sample_scenes(2, "val", 5, 37, 96)
    assert [s.index for s in scenes] == list(range(5, 37))
    for j in (0, 7, 31):
        one = R.sample_scene(2, "val", 5 + j, 96)
        for k in ("R", "t", "K", "vertices", "v_cam", "uv", "light_dir", "albedo", "hair", "lip_tint"):
            np.testing.assert_array_equal(getattr(one, k), getattr(scenes[j], k))
        assert one.render_seed == scenes[j].render_seed
        for k, v in R.scene_labels(one).items():
            np.testing.assert_array_equal(v, labels[k][j])


@pytest.mark.parametrize("n", [1, 5, 21])
def test_sizes_with_one_sample_chunks(tmp_path, n):
    """n = 5 and 21 end with a one-sample chunk (h5py writes those differently); n = 1 is a one-sample cache."""
    ds = _dataset(tmp_path, num_samples=n)
    ds.prepare()
    assert len(ds) == n and ds[n - 1]["image"].shape == (SIZE, SIZE, 3)


def test_labels_in_memory_equal_per_item_reads(tmp_path, monkeypatch):
    """Small caches serve labels from memory, large ones per item from HDF5: the same samples either way, and
    a sample's arrays are copies (a caller writing into one does not change the cache's)."""
    from hpe_bench.data.synthetic import dataset as synthetic_dataset
    ds = _dataset(tmp_path, num_samples=6)
    in_memory = [ds[i] for i in range(6)]
    assert isinstance(ds._labels["vertices"], np.ndarray)
    in_memory[0]["R"][:] = 0.0
    assert np.abs(ds[0]["R"]).sum() > 0
    monkeypatch.setattr(synthetic_dataset, "LABELS_IN_MEMORY_BYTES", 0)
    fresh = _dataset(tmp_path, num_samples=6)
    fresh._file()
    assert not isinstance(fresh._labels["vertices"], np.ndarray)  # an h5py dataset, read per item
    for i in range(1, 6):
        a, b = in_memory[i], fresh[i]
        assert np.array_equal(a["image"], b["image"])
        for k in synthetic_dataset.LABELS:
            assert np.array_equal(a[k], b[k]), k
