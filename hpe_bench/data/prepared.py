"""``PreparedDataset``: any ``RawSource`` converted once into a resumable HDF5 cache of working crops.

Cache file ``<cache_dir>/<source name>/<split>-<hash>.h5``; ``hash`` covers the source class, its kwargs
except ``root`` (so a cache moves with the data and is found without the raw files), the working-crop
settings and ``PREPARE_VERSION``. Layout (``n`` kept records; see docs/datasets.md):

- ``images``: vlen uint8 (n,), JPEG bytes of the RGB working crop (``h5cache.decode_jpeg`` gives RGB back);
- per schema field ``F`` (``hpe_bench.schema.FIELDS``): ``F`` float32 ``(n, ...)`` (zeros where absent) and
  ``has_F`` bool (n,); ``vertices`` is vlen float32 (flattened ``(N, 3)``, any N); ``box`` float32 (n, 4);
- ``record_index`` int64 (source index), ``record_id``, ``sample_id``, ``dataset``, ``topology`` (strings),
  ``crop_A`` float64 (n, 3, 3) original image -> working crop, ``orig_size`` int32 (n, 2) original (W, H);
- ``skipped_id``, ``skipped_reason``: strings, one row per record left out by ``on_error="skip"``;
- attrs ``prepare_version``, ``settings`` (JSON), ``num_records``, ``num_source_records``, ``complete=True``.

Preparation is chunked: each chunk of ``chunk_size`` records is written atomically to
``<file stem>.parts/part-<start>-<stop>.h5``; a rerun after an interruption keeps the complete parts and
continues. The parts are merged atomically into the final file (never half-written), then removed.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import multiprocessing as mp
import operator
import os
import pathlib
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator

import h5py
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import Dataset
from tqdm import tqdm

from ..schema import FIELDS, SampleError, validate_sample
from . import h5cache
from .raw import RawSource, RecordError
from .working_crop import working_crop, working_transform

log = logging.getLogger(__name__)

PREPARE_VERSION = 1
STRINGS = ("record_id", "sample_id", "dataset", "topology")
ON_ERROR = ("raise", "skip")
_STR = h5py.string_dtype("utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    json.dumps(value)  # TypeError for values a cache key cannot hold
    return value


def source_spec(source: Callable[..., RawSource] | RawSource) -> tuple[type, dict[str, Any]]:
    """``(class, key settings)`` of a source given as a ``functools.partial`` (Hydra ``_partial_: true``) or an
    instance. The settings are the partial's kwargs without ``root``, or an instance's ``settings()``, plus
    ``root_name``, the last component of the root: the cache survives moving the data elsewhere, but two
    members of a mixture that differ only by their root (OpNet HDF5 files) get different caches."""
    if isinstance(source, functools.partial):
        if source.args:
            raise TypeError(f"source partial {source!r}: give every argument by keyword (root=..., split=...)")
        kwargs = {k: _jsonable(v) for k, v in source.keywords.items() if k != "root"}
        root = source.keywords.get("root")
        kwargs["root_name"] = pathlib.Path(str(root)).name if root not in (None, "") else None
        return source.func, kwargs
    if isinstance(source, RawSource):
        return type(source), {**_jsonable(source.settings()), "root_name": source.root.name}
    raise TypeError(f"source must be a RawSource or a partial of one (Hydra `_partial_: true`), got {source!r}")


def _write_rows(dset: h5py.Dataset, start: int, values: list) -> None:
    """Write vlen rows one by one: h5py turns an object array of equal-length arrays (identical JPEG sizes)
    into a 2D array and refuses it, so a slice assignment is not safe."""
    for j, v in enumerate(values):
        dset[start + j] = v


def _create_layout(f: h5py.File, n: int) -> None:
    h5cache.create_bytes_dataset(f, "images", n)
    f.create_dataset("box", (n, 4), np.float32)
    for fld in FIELDS:
        if fld.name == "vertices":
            f.create_dataset("vertices", (n,), dtype=h5py.vlen_dtype(np.float32))
        else:
            f.create_dataset(fld.name, (n,) + fld.shape, np.float32)
        f.create_dataset(f"has_{fld.name}", (n,), bool)
    f.create_dataset("record_index", (n,), np.int64)
    for key in STRINGS:
        f.create_dataset(key, (n,), dtype=_STR)
    f.create_dataset("crop_A", (n, 3, 3), np.float64)
    f.create_dataset("orig_size", (n, 2), np.int32)


def prepare_record(src: RawSource, i: int, size: int, scale: float, quality: int) -> dict[str, Any]:
    """Read, validate and crop record ``i``; ``RecordError`` naming the record (and, from the source, its file)."""
    rid = src.record_id(i)
    where = f"{src.name} {src.split} record {i} ({rid})"
    try:
        sample = src.read(i)
        sample.setdefault("sample_id", rid)
        sample.setdefault("dataset", src.name)
        validate_sample(sample, where)
        crop = working_crop(sample, size, scale)
        validate_sample(crop, where)
    except (RecordError, SampleError) as exc:
        raise RecordError(f"{where}: {exc}") from exc
    H, W = sample["image"].shape[:2]
    return {"crop": crop, "jpeg": h5cache.encode_jpeg(crop["image"], quality), "index": i, "record_id": rid,
            "A": working_transform(sample["box"], size, scale), "orig_size": (W, H)}


def build_part(src: RawSource, start: int, stop: int, path: pathlib.Path, attrs: dict[str, Any],
               size: int, scale: float, quality: int, on_error: str) -> tuple[int, list]:
    """Prepare records ``start..stop-1`` into the part file ``path`` (atomically); ``(kept, skipped)``."""
    rows, skipped = [], []
    for i in range(start, stop):
        try:
            rows.append(prepare_record(src, i, size, scale, quality))
        except RecordError as exc:
            if on_error == "raise":
                raise
            log.warning("skipping %s", exc)
            skipped.append([src.record_id(i), str(exc)])
    m = len(rows)
    with h5cache.atomic_h5(path, {**attrs, "start": start, "stop": stop}) as f:
        _create_layout(f, m)
        _write_skipped(f, skipped)
        _write_rows(f["images"], 0, [r["jpeg"] for r in rows])
        if not m:
            return 0, skipped
        crops = [r["crop"] for r in rows]
        f["box"][:] = np.stack([c["box"] for c in crops])
        for fld in FIELDS:
            has = np.array([fld.name in c for c in crops])
            f[f"has_{fld.name}"][:] = has
            if fld.name == "vertices":
                for j in np.flatnonzero(has):  # absent rows stay empty (vlen default)
                    f["vertices"][j] = np.asarray(crops[j]["vertices"], np.float32).ravel()
            elif has.any():
                f[fld.name][:] = np.stack([c[fld.name] if fld.name in c else np.zeros(fld.shape, np.float32)
                                           for c in crops])
        f["record_index"][:] = [r["index"] for r in rows]
        f["record_id"][:] = np.array([r["record_id"] for r in rows], dtype=object)
        for key in ("sample_id", "dataset", "topology"):
            f[key][:] = np.array([str(c.get(key, "")) for c in crops], dtype=object)
        f["crop_A"][:] = np.stack([r["A"] for r in rows])
        f["orig_size"][:] = np.array([r["orig_size"] for r in rows])
    return m, skipped


def _write_skipped(f: h5py.File, skipped: list) -> None:
    # datasets, not attrs: HDF5 attributes are limited to 64 KiB
    f.create_dataset("skipped_id", data=np.array([s[0] for s in skipped], dtype=object), dtype=_STR)
    f.create_dataset("skipped_reason", data=np.array([s[1] for s in skipped], dtype=object), dtype=_STR)


def _read_skipped(f: h5py.File) -> list:
    return [[a, b] for a, b in zip(f["skipped_id"].asstr()[:], f["skipped_reason"].asstr()[:])]


_WORKER_SOURCE: RawSource | None = None


def _worker_init(source: Callable[..., RawSource] | RawSource) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source if isinstance(source, RawSource) else source()


def _worker_build(*args: Any) -> tuple[int, list]:
    return build_part(_WORKER_SOURCE, *args)


class PreparedDataset(h5cache.PerProcessHandle, Dataset):
    """Schema samples (working crops) of a ``RawSource``, read from a prepared HDF5 cache (or raw files).

    Args:
        source: a ``RawSource`` or a partial building one (Hydra ``_partial_: true``); a partial is only called
            when raw files are needed, so a valid cache works without them.
        cache_dir: cache root (``paths.cache_dir``).
        working_size, working_scale: the working crop (``working_crop.working_crop``).
        jpeg_quality: of the cached crops.
        on_error: ``"raise"`` (evaluation: a bad record is an error naming its file) or ``"skip"`` (training:
            bad records are logged, counted and left out; their ids are kept in the cache attrs).
        raw: read the source on the fly (small sets; no cache).
        chunk_size: records per resumable part file; workers: preparation processes (0 = this process).
    """

    _h5_derived = ("_dsets",)  # per-process dataset handles, reopened with the file

    def __init__(self, source: Callable[..., RawSource] | RawSource, cache_dir: str = ".cache/hpe_bench",
                 working_size: int = 256, working_scale: float = 2.0, jpeg_quality: int = 95,
                 on_error: str = "raise", raw: bool = False, chunk_size: int = 256, workers: int = 0):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if int(working_size) < 16 or not float(working_scale) > 0:
            raise ValueError(f"working_size must be >= 16 and working_scale > 0, got {working_size}, {working_scale}")
        self.source_arg = source
        self.cls, self.source_settings = source_spec(source)
        self.working_size, self.working_scale = int(working_size), float(working_scale)
        self.jpeg_quality, self.on_error, self.raw = int(jpeg_quality), on_error, bool(raw)
        self.chunk_size, self.workers = max(int(chunk_size), 1), int(workers)
        self.name = str(getattr(self.cls, "name", self.cls.__name__.lower()))
        split = self.source_settings.get("split", getattr(source, "split", None))
        if split is None:  # a partial without split: the source's default
            split = inspect.signature(self.cls).parameters.get("split", inspect.Parameter("split", 1, default="all")).default
        self.split = str(split)
        self.path = pathlib.Path(cache_dir) / self.name / f"{self.split}-{h5cache.settings_hash(self.settings)}.h5"
        self.parts_dir = self.path.with_name(self.path.stem + ".parts")
        self.skipped: list = []
        self._src: RawSource | None = source if isinstance(source, RawSource) else None
        self._ready, self._n = False, 0
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._meta: dict[str, np.ndarray] = {}
        self._dsets: dict[str, h5py.Dataset] = {}
        self._raw_skips = 0

    @property
    def settings(self) -> dict[str, Any]:
        return {"source": f"{self.cls.__module__}.{self.cls.__qualname__}", "source_settings": self.source_settings,
                "working_size": self.working_size, "working_scale": self.working_scale,
                "jpeg_quality": self.jpeg_quality, "prepare_version": PREPARE_VERSION}

    def _attrs(self) -> dict[str, Any]:
        return {"prepare_version": PREPARE_VERSION, "settings": json.dumps(self.settings, sort_keys=True)}

    def source(self) -> RawSource:
        """The raw source (built on first use; ``LayoutError`` if the root is missing or wrong)."""
        if self._src is None:
            self._src = self.source_arg()
        return self._src

    # ---------------------------------------------------------------- preparation
    def check(self) -> str | None:
        """Why the cache file is not usable, or ``None``."""
        reason = h5cache.check_cache(self.path, self._attrs(), {})
        if reason is not None:
            return reason
        with h5py.File(self.path, "r") as f:
            n = int(f.attrs.get("num_records", -1))
            bad = [k for k in f if len(f[k]) != n and not k.startswith("skipped_")]
        return f"datasets {bad} do not have num_records = {n} rows" if bad else None

    def prepare(self) -> pathlib.Path | None:
        """Make sure the cache exists (build or resume it, with a progress bar); idempotent. ``None`` if raw."""
        if self.raw:
            self._n, self._ready = len(self.source()), True
            return None
        self.close()
        reason = self.check()
        if reason is not None:
            if reason != "missing":
                warnings.warn(f"cache file {self.path} is invalid ({reason}); regenerating it",
                              h5cache.CacheWarning, stacklevel=2)
            self._build()
            reason = self.check()
            if reason is not None:
                raise RuntimeError(f"cache file {self.path} is invalid right after preparation ({reason})")
        with h5py.File(self.path, "r") as f:
            self._n = int(f.attrs["num_records"])
            self.skipped = _read_skipped(f)
            self.num_source_records = int(f.attrs["num_source_records"])
        if self.skipped and self.on_error == "raise":
            shown = "\n".join(f"  {rid}: {why}" for rid, why in self.skipped[:5])
            raise RecordError(f"cache {self.path} left out {len(self.skipped)} bad records (prepared with "
                              f"on_error='skip'), but on_error='raise' here; first ones:\n{shown}")
        if self.skipped:
            log.warning("%s %s: %d of %d records skipped as bad (ids in attrs 'skipped' of %s)", self.name,
                        self.split, len(self.skipped), self.num_source_records, self.path)
        self._ready = True
        return self.path

    def _parts(self, n: int) -> list[tuple[int, int, pathlib.Path]]:
        return [(a, min(a + self.chunk_size, n), self.parts_dir / f"part-{a:09d}-{min(a + self.chunk_size, n):09d}.h5")
                for a in range(0, n, self.chunk_size)]

    def _build(self) -> None:
        src = self.source()
        n = len(src)
        parts = self._parts(n)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts_dir.glob(".*.tmp"):  # temp files of an interrupted part; never complete
            tmp.unlink(missing_ok=True)
        attrs = self._attrs()
        todo = [p for p in parts if h5cache.check_cache(p[2], {**attrs, "start": p[0], "stop": p[1]}, {}) is not None]
        args = (attrs, self.working_size, self.working_scale, self.jpeg_quality, self.on_error)
        desc = f"{self.name} {self.split} -> {self.path.name}"
        with tqdm(total=n, initial=n - sum(b - a for a, b, _ in todo), desc=desc, unit="rec",
                  dynamic_ncols=True) as bar:
            if todo and n - sum(b - a for a, b, _ in todo):
                log.info("resuming %s: %d of %d records already prepared", self.path, bar.n, n)
            for a, b in self._run(src, todo, args):
                bar.update(b - a)
        self._merge(parts, n)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _run(self, src: RawSource, todo: list, args: tuple) -> Iterator[tuple[int, int]]:
        if self.workers <= 1 or mp.current_process().daemon:
            for a, b, path in todo:
                build_part(src, a, b, path, *args)
                yield a, b
            return
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(self.source_arg,)) as ex:
            futures = [(a, b, ex.submit(_worker_build, a, b, path, *args)) for a, b, path in todo]
            try:
                for a, b, fut in futures:
                    fut.result()
                    yield a, b
            except BaseException:
                for _, _, fut in futures:
                    fut.cancel()
                raise

    def _merge(self, parts: list, n_source: int) -> None:
        skipped: list = []
        kept = []
        for a, b, path in parts:
            with h5py.File(path, "r") as p:
                skipped += _read_skipped(p)
                kept.append(len(p["images"]))
        n = sum(kept)
        attrs = {**self._attrs(), "num_records": n, "num_source_records": n_source}
        with h5cache.atomic_h5(self.path, attrs) as f:
            _create_layout(f, n)
            _write_skipped(f, skipped)
            start = 0
            for (_, _, path), m in zip(parts, kept):
                with h5py.File(path, "r") as p:
                    for key in p:
                        if key.startswith("skipped_"):
                            continue
                        if key == "vertices":  # vlen floats: only the rows that have them
                            for j in np.flatnonzero(p["has_vertices"][:]):
                                f[key][start + j] = p[key][j]
                        elif key == "images":
                            _write_rows(f[key], start, list(p[key][:]))
                        elif m:
                            f[key][start:start + m] = p[key][:]
                start += m

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        if not self._ready:
            self.prepare()
        return self._n

    def _file(self) -> h5py.File:
        # h5py handles are not fork-safe: each process (DataLoader worker) opens its own, lazily.
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = None
            if not self._ready:
                self.prepare()
            f = h5py.File(self.path, "r")
            self._meta = {k: f[k].asstr()[:] for k in STRINGS}
            self._meta.update({f"has_{fld.name}": f[f"has_{fld.name}"][:] for fld in FIELDS})
            # dataset objects looked up once: h5py's name lookup costs as much as the read itself
            self._dsets = {k: f[k] for k in ("images", "box") + tuple(fld.name for fld in FIELDS)}
            self._h5, self._pid = f, os.getpid()
        return self._h5

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name} {self.split}: index {i} out of range for {n} records")
        if self.raw:
            return self._read_raw(i)
        self._file()
        meta, dsets = self._meta, self._dsets
        sample: dict[str, Any] = {
            "image": h5cache.decode_jpeg(dsets["images"][i], where=f"{self.path} images[{i}] ({meta['record_id'][i]})"),
            "box": dsets["box"][i], "sample_id": meta["sample_id"][i], "dataset": meta["dataset"][i],
            "topology": meta["topology"][i],
        }
        for fld in FIELDS:
            if meta[f"has_{fld.name}"][i]:
                val = dsets[fld.name][i]
                sample[fld.name] = val.reshape(-1, 3) if fld.name == "vertices" else val
        return sample

    def _read_raw(self, i: int) -> dict[str, Any]:
        src = self.source()
        for k in range(self._n):
            j = (i + k) % self._n
            try:
                return prepare_record(src, j, self.working_size, self.working_scale, self.jpeg_quality)["crop"]
            except RecordError as exc:
                if self.on_error == "raise":
                    raise
                self._raw_skips += 1  # per process: DataLoader workers count their own
                log.warning("skipping (%d so far in this process) %s", self._raw_skips, exc)
        raise RecordError(f"{self.name} {self.split}: every record is bad")

    def report(self) -> dict[str, Any]:
        """Counts and path after ``prepare()``: records kept, source records, skipped ids."""
        return {"dataset": self.name, "split": self.split, "records": len(self),
                "source_records": getattr(self, "num_source_records", self._n), "skipped": len(self.skipped),
                "path": None if self.raw else str(self.path)}

    def __repr__(self) -> str:
        return (f"PreparedDataset({self.cls.__name__} {self.split!r}, working {self.working_size}px x"
                f"{self.working_scale}, {'raw' if self.raw else str(self.path)!r})")
