"""``SyntheticDataset``: the embedded synthetic 6DoF dataset, generated once into an HDF5 cache.

Cache file: ``<cache_dir>/synthetic/<split>-<num_samples>-<hash>.h5`` where ``hash`` covers every
generator setting and ``GENERATOR_VERSION``. Layout (``n = num_samples``):

- ``images``: vlen ``uint8`` (n,), JPEG bytes (quality 95) of the RGB render (encoded from BGR by OpenCV,
  so ``h5cache.decode_jpeg`` gives RGB back);
- ``K (n, 3, 3)``, ``R (n, 3, 3)``, ``t (n, 3)``, ``box (n, 4)``, ``landmarks_2d (n, 68, 2)``,
  ``landmarks_3d (n, 68, 3)``, ``vertices (n, 1220, 3)``: float32 labels (see ``scene.scene_labels``);
- attrs ``generator_version``, ``settings`` (JSON), ``num_samples``, ``complete=True``.

Sample ``i`` depends only on ``(seed, split, i)``, so the bytes do not depend on ``workers``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import operator
import os
import pathlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ...assets import ARKIT_TOPOLOGY
from .. import h5cache
from . import raster as _raster
from . import scene as _scene

DATASET_NAME = "synthetic"
JPEG_QUALITY = 95
LABELS = ("K", "R", "t", "box", "landmarks_2d", "landmarks_3d", "vertices")
MIN_IMAGE_SIZE = 32
# Labels of a cache up to this size are read into memory once per process (h5py costs ~0.1 ms per small read,
# 8 reads per sample: ~35 ms of a 32-sample batch, more than its JPEG decoding); larger caches read per item.
LABELS_IN_MEMORY_BYTES = 512 * 2**20


def generation_settings(split: str, num_samples: int, seed: int, image_size: int) -> dict[str, Any]:
    """Everything that determines the cache's content (hashed into its file name, stored in its attrs)."""
    return {"generator": "hpe_bench.data.synthetic", "generator_version": _scene.GENERATOR_VERSION,
            "split": split, "num_samples": int(num_samples), "seed": int(seed), "image_size": int(image_size),
            "jpeg_quality": JPEG_QUALITY}


def cache_path(cache_dir: str | os.PathLike, split: str, num_samples: int, seed: int, image_size: int) -> pathlib.Path:
    """``<cache_dir>/synthetic/<split>-<n>-<hash>.h5`` for these settings."""
    digest = h5cache.settings_hash(generation_settings(split, num_samples, seed, image_size))
    return pathlib.Path(cache_dir) / DATASET_NAME / f"{split}-{int(num_samples)}-{digest}.h5"


def sample_chunk(seed: int, split: str, start: int, stop: int, size: int) -> tuple[list, dict[str, np.ndarray]]:
    """Scenes ``start..stop-1`` and their stacked float32 labels ``{name: (m, ...)}`` (the torch half)."""
    scenes, labels = _scene.sample_scenes(seed, split, start, stop, size)  # batched over the chunk
    return scenes, {k: labels[k] for k in LABELS}


def _pool_context() -> mp.context.BaseContext:
    """A clean start method: "forkserver" (preloaded, so pools after the first start in ~0.1 s) or "spawn".

    Never plain "fork": a process that already ran multi-threaded OpenCV/torch code (a test session, a
    training run) forks children that deadlock on locks held by threads that do not exist in the child.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([_raster.__name__])  # numpy + cv2 only: no torch import in workers
        return ctx
    return mp.get_context("spawn")


def _results(jobs: list, workers: int) -> Iterator[tuple[int, list[np.ndarray], dict[str, np.ndarray]]]:
    """``(start, JPEG byte arrays, labels)`` per chunk, in order.

    This process samples scenes and labels (torch); ``workers`` processes render and encode them
    (numpy/cv2), at most ``2 * workers + 1`` chunks in flight so memory stays bounded. ``workers <= 1``
    (or inside a daemonic DataLoader worker, which cannot have children) renders here.
    """
    if workers <= 1 or mp.current_process().daemon:
        for seed, split, start, stop, size in jobs:
            scenes, labels = sample_chunk(seed, split, start, stop, size)
            yield start, _raster.render_jpeg_chunk(scenes, JPEG_QUALITY), labels
        return
    ex = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_raster.worker_init,
                             initargs=(_scene.mesh(),))
    try:
        pending: deque = deque()
        for seed, split, start, stop, size in jobs:
            scenes, labels = sample_chunk(seed, split, start, stop, size)  # overlaps with workers' rendering
            pending.append((start, labels, ex.submit(_raster.render_jpeg_chunk, scenes, JPEG_QUALITY)))
            while len(pending) > 2 * workers or (pending and pending[0][2].done()):
                start, labels, fut = pending.popleft()
                yield start, fut.result(), labels
        while pending:
            start, labels, fut = pending.popleft()
            yield start, fut.result(), labels
    except BrokenProcessPool as exc:
        raise RuntimeError("synthetic generation: a worker process died (out of memory? a __main__ module "
                           "that cannot be re-imported, e.g. a script on stdin?); try workers=1") from exc
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # on errors: drop queued chunks, wait for running ones


def write_samples(f: h5py.File, seed: int, split: str, num_samples: int, image_size: int, workers: int = 2,
                  desc: str = "synthetic") -> None:
    """Generate all samples into the open (temporary) file ``f`` with a tqdm progress bar."""
    n = num_samples
    shapes = {"K": (3, 3), "R": (3, 3), "t": (3,), "box": (4,), "landmarks_2d": (68, 2), "landmarks_3d": (68, 3),
              "vertices": (len(_scene.mesh()["vertices"]), 3)}
    for k in LABELS:
        f.create_dataset(k, (n,) + shapes[k], dtype=np.float32, chunks=(min(n, 64),) + shapes[k])
    h5cache.create_bytes_dataset(f, "images", n)
    step = int(np.clip(-(-n // (max(workers, 1) * 4)), 4, 64))  # >= 4 chunks per worker for load balance
    jobs = [(int(seed), split, a, min(a + step, n), int(image_size)) for a in range(0, n, step)]
    threads = torch.get_num_threads(), cv2.getNumThreads()
    # per-sample work is tiny (1220 points, 256^2 images): intra-op threads only add overhead and
    # compete with the worker processes, so run this process single-threaded while generating
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        _write_results(f, _results(jobs, workers), n, desc)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def _write_results(f: h5py.File, results: Iterator, n: int, desc: str) -> None:
    images = f["images"]
    with tqdm(total=n, desc=desc, unit="img", dynamic_ncols=True) as bar:
        for start, jpegs, labels in results:
            stop = start + len(jpegs)
            blobs = np.empty(len(jpegs), dtype=object)
            for j, b in enumerate(jpegs):  # element-wise: a list of equal-length arrays would become 2D
                blobs[j] = b
            if len(blobs) == 1:  # h5py turns a one-element object array into (1, nbytes) and fails
                images[start] = blobs[0]
            else:
                images[start:stop] = blobs
            for k in LABELS:
                f[k][start:stop] = labels[k]
            bar.update(len(jpegs))


class SyntheticDataset(h5cache.PerProcessHandle, Dataset):
    """Synthetic ARKit-face renders with full 6DoF + landmark + dense-vertex labels (schema samples).

    ``split`` in ``scene.SPLIT_IDS`` (train/val/test: independent random streams); ``num_samples``
    images of ``image_size`` x ``image_size``; ``workers`` processes generate the cache (once).
    """

    _h5_derived = ("_labels",)  # per-process arrays/handles: dropped when pickled (PerProcessHandle)

    def __init__(self, split: str = "train", num_samples: int = 1000, seed: int = 0, image_size: int = 256,
                 cache_dir: str = ".cache/hpe_bench", workers: int = 2):
        _scene.split_id(split)  # ValueError naming the allowed splits
        if int(num_samples) < 1:
            raise ValueError(f"synthetic {split}: num_samples must be >= 1, got {num_samples}")
        if int(seed) < 0:
            raise ValueError(f"synthetic {split}: seed must be >= 0 (numpy SeedSequence), got {seed}")
        if int(image_size) < MIN_IMAGE_SIZE:
            raise ValueError(f"synthetic {split}: image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
        self.split, self.num_samples, self.seed = split, int(num_samples), int(seed)
        self.image_size, self.workers = int(image_size), int(workers)
        self.cache_dir = pathlib.Path(cache_dir)
        self.path = cache_path(cache_dir, split, num_samples, seed, image_size)
        self._ready = False
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._labels: dict[str, Any] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return generation_settings(self.split, self.num_samples, self.seed, self.image_size)

    def prepare(self) -> pathlib.Path:
        """Make sure a valid cache exists (generate, or warn and regenerate an invalid one); idempotent."""
        self.close()  # a regeneration replaces the file: never keep reading an old handle
        attrs = {"generator_version": _scene.GENERATOR_VERSION,
                 "settings": json.dumps(self.settings, sort_keys=True), "num_samples": self.num_samples}
        lengths = {name: self.num_samples for name in ("images",) + LABELS}
        desc = f"synthetic {self.split} -> {self.path.name}"

        def build(f: h5py.File) -> None:
            write_samples(f, self.seed, self.split, self.num_samples, self.image_size, self.workers, desc)

        h5cache.ensure_cache(self.path, attrs, lengths, build)
        self._ready = True
        return self.path

    def __len__(self) -> int:
        return self.num_samples

    def _file(self) -> h5py.File:
        # h5py handles are not fork-safe: each process (DataLoader worker) opens its own, lazily.
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = None  # an inherited handle belongs to the parent; just drop our reference
            if not self._ready:
                self.prepare()
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
            # dataset handles looked up once; label arrays in memory when they fit (LABELS_IN_MEMORY_BYTES)
            labels = {k: self._h5[k] for k in LABELS}
            if sum(d.size * d.dtype.itemsize for d in labels.values()) <= LABELS_IN_MEMORY_BYTES:
                labels = {k: d[()] for k, d in labels.items()}
            self._labels = labels | {"images": self._h5["images"]}
        return self._h5

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = operator.index(i)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"synthetic {self.split}: index {i} out of range for {self.num_samples} samples")
        self._file()
        data = self._labels
        sample: dict[str, Any] = {
            "image": h5cache.decode_jpeg(data["images"][i], where=f"{self.path} images[{i}]"),
            "dataset": DATASET_NAME,
            "sample_id": f"{DATASET_NAME}/{self.split}/{i:06d}",
            "topology": ARKIT_TOPOLOGY,
        }
        for k in LABELS:
            sample[k] = np.array(data[k][i], dtype=np.float32)  # a copy: collate must not alias the cache
        return sample

    def __repr__(self) -> str:
        return (f"SyntheticDataset(split={self.split!r}, num_samples={self.num_samples}, seed={self.seed}, "
                f"image_size={self.image_size}, cache={str(self.path)!r})")
