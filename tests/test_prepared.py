"""Working crop geometry and the prepared (HDF5) cache: labels, resumability, error policy, raw mode."""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hpe_bench import geometry as G
from hpe_bench.data.h5cache import decode_jpeg, encode_jpeg
from hpe_bench.data.prepared import PreparedDataset
from hpe_bench.data.raw import LayoutError, RawSource, RecordError, read_image
from hpe_bench.data.working_crop import warp_image, working_crop, working_transform
from hpe_bench.models.crop import CropInput
from hpe_bench.schema import collate


def scene(rng: np.random.Generator, W: int = 320, H: int = 240, with_k: bool = True) -> dict:
    """A full-resolution sample whose labels are derived from one perspective camera (known geometry)."""
    f = rng.uniform(250, 400)
    K = np.array([[f, 0, W / 2 + rng.uniform(-5, 5)], [0, f, H / 2 + rng.uniform(-5, 5)], [0, 0, 1]])
    R = G.euler_to_matrix(torch.tensor(rng.uniform(-30, 30, 3)), "trg").numpy()
    t = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.5, 0.8)])
    head = rng.uniform(-0.08, 0.08, (68, 3))
    cam = torch.as_tensor(head @ R.T + t)
    K_t, t_t = torch.as_tensor(K), torch.as_tensor(t)
    lm2 = G.project_points(cam, K_t).numpy()
    lm3 = G.depth_relative_points(cam, K_t, t_t).numpy()
    uv = G.project_points(t_t[None], K_t).numpy()[0]
    sample = {"image": rng.integers(0, 255, (H, W, 3), dtype=np.uint8), "box": G.box_from_points(torch.as_tensor(lm2)).numpy(),
              "R": R, "t": t, "landmarks_2d": lm2, "landmarks_3d": lm3, "head_2d": np.array([*uv, 0.1 * f / t[2]]),
              "shape_params": rng.normal(size=50), "vertices": head, "dataset": "fake", "sample_id": "s",
              "topology": ""}
    if with_k:
        sample["K"] = K
    return sample, head


class FakeSource(RawSource):
    """A RawSource over ``root/img_XXX.png`` + ``root/labels.npz`` (PNG files, so a test can corrupt one)."""
    name = "fake"
    layout = "root/\n  img_000.png ...\n  labels.npz"

    fail_at = -1  # tests set it to interrupt a preparation (a class attribute: not part of the cache key)

    def __init__(self, root, split: str = "test"):
        super().__init__(root, split)
        self.require(self.root / "labels.npz")
        with np.load(self.root / "labels.npz") as z:
            self.labels = {k: z[k] for k in z.files}
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.labels["box"])

    def record_id(self, i: int) -> str:
        return f"img_{i:03d}"

    def read(self, i: int) -> dict:
        if i == self.fail_at:
            raise KeyboardInterrupt  # simulates Ctrl-C / a killed run in the middle of a part
        self.reads.append(i)
        s = {"image": read_image(self.root / f"img_{i:03d}.png"), "box": self.labels["box"][i],
             "landmarks_2d": self.labels["landmarks_2d"][i], "R": self.labels["R"][i],
             "dataset": self.name, "sample_id": self.record_id(i), "topology": ""}
        if self.labels["has_K"][i]:
            s["K"] = self.labels["K"][i]
        return s


def write_fake(root: Path, n: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = {k: [] for k in ("box", "landmarks_2d", "R", "K", "has_K")}
    for i in range(n):
        s, _ = scene(rng, W=200 + 20 * (i % 3), H=160 + 10 * (i % 2))
        cv2.imwrite(str(root / f"img_{i:03d}.png"), cv2.GaussianBlur(s["image"], (0, 0), 3.0))  # JPEG-friendly
        for k in ("box", "landmarks_2d", "R", "K"):
            labels[k].append(s[k])
        labels["has_K"].append(i % 2 == 0)
    np.savez(root / "labels.npz", **{k: np.asarray(v) for k, v in labels.items()})
    return root


# ------------------------------------------------------------------------- working crop
@pytest.mark.parametrize("size,scale", [(256, 2.0), (64, 1.5)])
def test_projection_with_crop_k_lands_on_moved_labels(size, scale):
    rng = np.random.default_rng(1)
    for _ in range(5):
        s, head = scene(rng)
        c = working_crop(s, size, scale)
        cam = torch.as_tensor(head @ s["R"].T + s["t"])
        K = torch.as_tensor(c["K"], dtype=torch.float64)
        np.testing.assert_allclose(G.project_points(cam, K).numpy(), c["landmarks_2d"], atol=2e-3)
        # z of the image-space landmarks is "pixels at the head's distance": it scales with f, i.e. with the crop
        np.testing.assert_allclose(G.depth_relative_points(cam, K, torch.as_tensor(s["t"])).numpy(),
                                   c["landmarks_3d"], atol=2e-3)
        head_uv = G.project_points(torch.as_tensor(s["t"])[None], K).numpy()[0]
        np.testing.assert_allclose(c["head_2d"][:2], head_uv, atol=2e-3)
        A = working_transform(s["box"], size, scale)
        np.testing.assert_allclose(c["head_2d"][2], s["head_2d"][2] * A[0, 0], rtol=1e-5)
        for key in ("R", "t", "vertices", "shape_params"):
            np.testing.assert_allclose(c[key], s[key], rtol=1e-6, atol=1e-7)
        assert c["image"].shape == (size, size, 3) and c["image"].dtype == np.uint8


def test_crop_box_by_hand():
    s, _ = scene(np.random.default_rng(2))
    s["box"] = np.array([100.0, 50.0, 140.0, 70.0])  # 40 x 20 -> square side 80 at scale 2, centre (120, 60)
    c = working_crop(s, 160, 2.0)  # side 80 -> 160 px: s = 2, origin (80, 20)
    np.testing.assert_allclose(c["box"], [(100 - 80) * 2, (50 - 20) * 2, (140 - 80) * 2, (70 - 20) * 2], atol=1e-4)
    np.testing.assert_allclose(c["K"][0, 0], s["K"][0, 0] * 2, rtol=1e-6)
    np.testing.assert_allclose(c["K"][:2, 2], (s["K"][:2, 2] - [80, 20]) * 2, rtol=1e-5)


def test_fallback_intrinsics_are_the_original_images():
    s, _ = scene(np.random.default_rng(3), W=300, H=200, with_k=False)
    s["box"] = np.array([100.0, 50.0, 140.0, 70.0])
    c = working_crop(s, 160, 2.0)
    assert "K" not in c
    # f = W + H of the ORIGINAL image (500), principal point (W/2, H/2), then the crop: s = 2, origin (80, 20)
    np.testing.assert_allclose(c["K_fallback"], [[1000, 0, (150 - 80) * 2], [0, 1000, (100 - 20) * 2], [0, 0, 1]],
                               rtol=1e-6)
    batch = collate([c, working_crop(scene(np.random.default_rng(4))[0], 160, 2.0)])
    K = CropInput().full_intrinsics(batch)
    np.testing.assert_allclose(K[0].numpy(), c["K_fallback"], rtol=1e-6)  # not the fallback of a 160 px image
    assert batch["has_K"].tolist() == [False, True] and batch["has_K_fallback"].tolist() == [True, False]
    c2 = working_crop(c, 64, 1.0)  # a second crop carries the fallback through
    A2 = working_transform(c["box"], 64, 1.0)
    np.testing.assert_allclose(c2["K_fallback"], A2 @ c["K_fallback"], rtol=1e-5)


def test_round_trip_through_the_inverse_transform():
    s, _ = scene(np.random.default_rng(5))
    c = working_crop(s, 256, 2.0)
    Ainv = torch.linalg.inv(torch.as_tensor(working_transform(s["box"], 256, 2.0)))
    back = G.apply_transform_2d(Ainv, torch.as_tensor(c["landmarks_2d"], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(back, s["landmarks_2d"], atol=1e-3)
    np.testing.assert_allclose((Ainv.numpy() @ c["K"]), s["K"], rtol=1e-5, atol=1e-3)
    box = G.apply_transform_2d(Ainv, torch.as_tensor(c["box"], dtype=torch.float64).view(2, 2)).numpy().ravel()
    np.testing.assert_allclose(box, s["box"], atol=1e-3)


@pytest.mark.parametrize("box", [[30.0, 40.0, 90.0, 100.0], [-20.0, 150.0, 60.0, 230.0], [10, 10, 140, 110]])
def test_image_matches_geometry_crop_images(box):
    """cv2 path == kornia warp_affine(align_corners=True) path of geometry.crop_images, incl. the zero border."""
    rng = np.random.default_rng(6)
    img = cv2.GaussianBlur(rng.integers(0, 255, (200, 240, 3), dtype=np.uint8), (0, 0), 2.0)
    box = np.asarray(box, np.float64)
    ours = working_crop({"image": img, "box": box}, 128, 1.3)["image"].astype(np.float32)
    sq = G.square_box(torch.as_tensor(box)[None].float(), 1.3)
    ref = G.crop_images(torch.from_numpy(img).permute(2, 0, 1)[None].float(), sq, 128)[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours - ref)[2:-2, 2:-2]  # the outermost ring straddles the image border (zero padding)
    assert diff.mean() < 0.3 and np.percentile(diff, 99.9) <= 2.0, (diff.mean(), diff.max())


def test_large_downscale_keeps_geometry():
    """A blob at a known sub-pixel point of a large image lands where A maps it (pyramid path)."""
    H, W, p = 1500, 2000, np.array([1234.3, 777.8])
    yy, xx = np.mgrid[:H, :W]
    img = (250 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 12.0 ** 2))).astype(np.uint8)
    img = np.repeat(img[..., None], 3, 2)
    box = np.array([700.0, 300.0, 1700.0, 1300.0])  # crop side 1500 -> 96 px: scale 0.064, 3 pyramid levels
    c = working_crop({"image": img, "box": box}, 96, 1.5)
    A = working_transform(box, 96, 1.5)
    want = G.apply_transform_2d(torch.as_tensor(A), torch.as_tensor(p)[None]).numpy()[0]
    w = c["image"][..., 0].astype(np.float64)
    got = np.array([(w * np.arange(96)[None]).sum(), (w * np.arange(96)[:, None]).sum()]) / w.sum()
    np.testing.assert_allclose(got, want, atol=0.1)
    assert np.array_equal(warp_image(img, A, 96), c["image"])


def test_crop_outside_the_image_is_black():
    img = np.full((50, 60, 3), 200, np.uint8)
    c = working_crop({"image": img, "box": np.array([500.0, 500, 520, 520])}, 32, 2.0)
    assert c["image"].max() == 0


# ------------------------------------------------------------------------- prepared cache
def make(root: Path, cache: Path, **kw) -> PreparedDataset:
    return PreparedDataset(functools.partial(FakeSource, root=str(root), split="test"), str(cache),
                           working_size=kw.pop("working_size", 64), **kw)


def test_cache_holds_the_working_crops_and_labels(tmp_path):
    root = write_fake(tmp_path / "raw")
    ds = make(root, tmp_path / "cache")
    ds.prepare()
    src = FakeSource(root)
    assert len(ds) == len(src) == 10
    for i in (0, 1, 7):
        want = working_crop(src.read(i), 64, 2.0)
        got = ds[i]
        assert set(got) == set(want), (set(got) ^ set(want))
        for key in ("box", "landmarks_2d", "R", "K", "K_fallback"):
            if key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(got["image"], decode_jpeg(encode_jpeg(want["image"], 95)))
        assert got["sample_id"] == f"img_{i:03d}" and got["dataset"] == "fake"
    with h5py.File(ds.path, "r") as f:
        assert f["record_id"].asstr()[3] == "img_003" and f.attrs["num_source_records"] == 10
        np.testing.assert_array_equal(f["orig_size"][1], [220, 170])
    assert not ds.parts_dir.exists()


def test_cache_is_found_without_raw_files_and_key_ignores_root(tmp_path):
    root = write_fake(tmp_path / "raw")
    make(root, tmp_path / "cache").prepare()
    moved = make(tmp_path / "elsewhere" / "raw", tmp_path / "cache")  # raw files absent: the cache is enough
    assert len(moved) == 10 and moved[2]["sample_id"] == "img_002"
    assert make(root, tmp_path / "cache", working_size=96).path != moved.path  # settings are in the key
    assert make(tmp_path / "other_file", tmp_path / "cache").path != moved.path  # so is the root's own name
    with pytest.raises(LayoutError, match="elsewhere"):
        make(tmp_path / "elsewhere" / "raw", tmp_path / "cache", working_size=96).prepare()


def test_interrupted_preparation_resumes_and_leaves_nothing_at_the_final_path(tmp_path, monkeypatch):
    root = write_fake(tmp_path / "raw", n=10)
    ds = make(root, tmp_path / "cache", chunk_size=4)
    monkeypatch.setattr(FakeSource, "fail_at", 9)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare()
    monkeypatch.undo()
    assert not ds.path.exists()
    assert len(list(ds.parts_dir.glob("part-*.h5"))) == 2  # records 0-3 and 4-7 are safe
    (ds.parts_dir / ".part-x.h5.tmp").write_bytes(b"half-written")  # what a kill mid-part leaves
    resumed = make(root, tmp_path / "cache", chunk_size=4)
    assert resumed.path == ds.path
    resumed.prepare()
    assert resumed.source().reads == [8, 9]  # only the unfinished part was read again
    fresh = make(root, tmp_path / "fresh", chunk_size=4)
    fresh.prepare()
    with h5py.File(resumed.path, "r") as a, h5py.File(fresh.path, "r") as b:
        for key in ("landmarks_2d", "K", "has_K", "box"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        assert all(np.array_equal(x, y) for x, y in zip(a["images"][:], b["images"][:]))
    assert not resumed.parts_dir.exists()


def test_garbage_at_the_final_path_is_rebuilt(tmp_path):
    from hpe_bench.data.h5cache import CacheWarning
    root = write_fake(tmp_path / "raw", n=3)
    ds = make(root, tmp_path / "cache")
    ds.path.parent.mkdir(parents=True)
    ds.path.write_bytes(b"not hdf5")
    with pytest.warns(CacheWarning, match=str(ds.path)):
        ds.prepare()
    assert len(ds) == 3


def test_corrupt_image_raises_at_evaluation_and_is_skipped_in_training(tmp_path):
    root = write_fake(tmp_path / "raw", n=6)
    (root / "img_004.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(RecordError, match=r"img_004\.png") as err:
        make(root, tmp_path / "cache").prepare()
    assert "record 4" in str(err.value)
    train = make(root, tmp_path / "cache", on_error="skip")
    train.prepare()
    assert len(train) == 5 and [train[i]["sample_id"] for i in range(5)][-2:] == ["img_003", "img_005"]
    assert train.report()["skipped"] == 1 and train.skipped[0][0] == "img_004"
    assert "img_004.png" in train.skipped[0][1]
    with pytest.raises(RecordError, match="img_004"):  # a cache with holes is not used for evaluation
        make(root, tmp_path / "cache", on_error="raise").prepare()
    raw = make(root, tmp_path / "cache", on_error="skip", raw=True)
    assert raw[4]["sample_id"] == "img_005"  # raw mode: the bad record is replaced by the next one
    with pytest.raises(RecordError, match=r"img_004\.png"):
        make(root, tmp_path / "cache", raw=True)[4]


def test_nan_label_is_rejected_naming_the_record(tmp_path):
    root = write_fake(tmp_path / "raw", n=4)
    with np.load(root / "labels.npz") as z:
        labels = dict(z)
    labels["landmarks_2d"][2, 5, 0] = np.nan
    np.savez(root / "labels.npz", **labels)
    with pytest.raises(RecordError, match=r"img_002.*landmarks_2d.*NaN"):
        make(root, tmp_path / "cache").prepare()


def test_raw_mode_matches_the_cache_and_batches_through_workers(tmp_path):
    root = write_fake(tmp_path / "raw", n=8)
    cached, raw = make(root, tmp_path / "cache"), make(root, tmp_path / "cache", raw=True)
    cached.prepare()
    assert len(raw) == 8 and not cached.path.with_name("x").exists()
    np.testing.assert_allclose(raw[3]["landmarks_2d"], cached[3]["landmarks_2d"], atol=1e-5)
    batches = list(DataLoader(cached, batch_size=4, num_workers=2, collate_fn=collate))
    assert [b["image"].shape for b in batches] == [(4, 3, 64, 64)] * 2
    assert batches[0]["has_K"].tolist() == [True, False, True, False]
    assert batches[0]["has_K_fallback"].tolist() == [False, True, False, True]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        make(tmp_path, tmp_path, on_error="ignore")
    with pytest.raises(TypeError, match="keyword"):
        PreparedDataset(functools.partial(FakeSource, str(tmp_path)), str(tmp_path))


@pytest.mark.slow
def test_worker_processes_write_the_same_cache(tmp_path):
    root = write_fake(tmp_path / "raw", n=7)
    pooled = PreparedDataset(functools.partial(FakeSource, root=str(root)), str(tmp_path / "a"), working_size=64,
                             chunk_size=3, workers=2)
    serial = PreparedDataset(functools.partial(FakeSource, root=str(root)), str(tmp_path / "b"), working_size=64,
                             chunk_size=3)
    assert pooled.split == "test"  # the source's default split, taken from its signature
    pooled.prepare()
    serial.prepare()
    with h5py.File(pooled.path, "r") as a, h5py.File(serial.path, "r") as b:
        for key in ("K", "box", "landmarks_2d", "has_K", "record_index"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        assert all(np.array_equal(x, y) for x, y in zip(a["images"][:], b["images"][:]))


def test_equal_length_jpegs_are_written(tmp_path):
    """Regression: identical images give equal-length JPEG bytes, which a vlen slice assignment refuses."""
    import h5py
    from hpe_bench.data import h5cache
    from hpe_bench.data.prepared import _write_rows
    rows = [np.arange(10, dtype=np.uint8), np.arange(10, dtype=np.uint8), np.arange(7, dtype=np.uint8)]
    with h5py.File(tmp_path / "t.h5", "w") as f:
        h5cache.create_bytes_dataset(f, "images", 4)
        _write_rows(f["images"], 1, rows)
        assert [len(f["images"][i]) for i in range(4)] == [0, 10, 10, 7]
        np.testing.assert_array_equal(f["images"][2], rows[1])
