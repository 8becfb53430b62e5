"""Reusable helpers for generated-once HDF5 caches (atomic writes, validation, JPEG bytes).

A cache file is valid only if h5py can open it, its attrs carry ``complete=True`` plus the expected
attrs (generator version, settings JSON, ...) and every expected dataset has the expected length.
Anything else is reported with a warning naming the file and rebuilt: a cache is never used silently
when it might be stale or truncated.

Files are written atomically: into a temporary file in the same directory (same file system, so
``os.replace`` is an atomic rename), marked ``complete`` last, then renamed onto the final path. An
interrupted build therefore never leaves a file at the final path, and concurrent builders of the same
cache (e.g. several ranks) each rename a complete, identical file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
import warnings
from typing import Any, Callable, Iterator, Mapping

import cv2
import h5py
import numpy as np

__all__ = [
    "settings_hash", "check_cache", "atomic_h5", "ensure_cache", "create_bytes_dataset",
    "encode_jpeg", "decode_jpeg", "CacheWarning", "PerProcessHandle",
]


class CacheWarning(UserWarning):
    """An existing cache file is invalid (unreadable, incomplete, stale) and is being regenerated."""


def settings_hash(settings: Mapping[str, Any], length: int = 12) -> str:
    """Short stable hex hash of a JSON-serialisable settings dict (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _same(a: Any, b: Any) -> bool:
    # h5py returns numpy scalars / bytes for attrs; compare by value.
    if isinstance(a, bytes):
        a = a.decode()
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b))) and np.shape(a) == np.shape(b)
    except Exception:  # incomparable types are simply different
        return False


def check_cache(path: str | os.PathLike, attrs: Mapping[str, Any], lengths: Mapping[str, int]) -> str | None:
    """Why the cache at ``path`` is not usable, or ``None`` if it is valid.

    ``attrs``: attribute values the file must carry (besides ``complete=True``);
    ``lengths``: dataset name -> required first-dimension length.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                return "not marked complete (interrupted or foreign file)"
            for key, want in attrs.items():
                if key not in f.attrs:
                    return f"attr {key!r} missing"
                if not _same(f.attrs[key], want):
                    return f"attr {key!r} is {f.attrs[key]!r}, expected {want!r}"
            for name, n in lengths.items():
                if name not in f:
                    return f"dataset {name!r} missing"
                if len(f[name]) != n:
                    return f"dataset {name!r} has {len(f[name])} rows, expected {n}"
    except Exception as exc:  # h5py raises OSError for garbage/truncated files; be broad on purpose
        return f"cannot be read by h5py ({type(exc).__name__}: {exc})"
    return None


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, attrs: Mapping[str, Any] | None = None) -> Iterator[h5py.File]:
    """Write an HDF5 file atomically: yields a file open on a temporary path next to ``path``.

    On normal exit ``attrs`` and ``complete=True`` are written, the file is closed and renamed onto
    ``path`` with ``os.replace``. On any exception (KeyboardInterrupt included) the temporary file is
    removed and the exception propagates; ``path`` is left untouched.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            f.attrs["complete"] = True  # last, so only a fully written file carries it
        from ..filemode import share
        share(tmp)  # mkstemp's 0600 -> the umask's mode: a cache the group can read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def ensure_cache(path: str | os.PathLike, attrs: Mapping[str, Any], lengths: Mapping[str, int],
                 build: Callable[[h5py.File], None]) -> pathlib.Path:
    """Return ``path`` once it holds a valid cache, building it with ``build(file)`` if needed.

    An existing but invalid file triggers a ``CacheWarning`` naming the file and the reason, then a
    rebuild. ``build`` must create the datasets of ``lengths``; the result is re-checked afterwards.
    """
    path = pathlib.Path(path)
    reason = check_cache(path, attrs, lengths)
    if reason is None:
        return path
    if reason != "missing":
        warnings.warn(f"cache file {path} is invalid ({reason}); regenerating it", CacheWarning, stacklevel=3)
    with atomic_h5(path, attrs) as f:
        build(f)
    reason = check_cache(path, attrs, lengths)
    if reason is not None:
        raise RuntimeError(f"cache file {path} is invalid right after generation ({reason}); generator bug")
    return path


def create_bytes_dataset(f: h5py.File, name: str, n: int) -> h5py.Dataset:
    """Variable-length ``uint8`` dataset of ``n`` rows (one encoded image per row)."""
    return f.create_dataset(name, (n,), dtype=h5py.vlen_dtype(np.uint8))


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG-encode an RGB ``uint8 (H, W, 3)`` image -> 1D ``uint8`` bytes (OpenCV stores BGR, so convert)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    return buf.reshape(-1)


def decode_jpeg(buf: np.ndarray | bytes, where: str = "") -> np.ndarray:
    """Decode JPEG (or PNG) bytes to an RGB ``uint8 (H, W, 3)`` array; ``ValueError`` names ``where``."""
    arr = np.frombuffer(buf, np.uint8) if isinstance(buf, (bytes, bytearray)) else np.asarray(buf, np.uint8)
    bgr = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{where or 'image'}: cannot decode {arr.size} image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class PerProcessHandle:
    """Mixin for datasets that read an HDF5 file opened lazily, once per process.

    DataLoader workers must not share (or unpickle) the parent's handle: the subclass opens ``self._h5`` in
    its own reader, recording ``self._pid``; this mixin closes it only in the process that opened it and
    drops it (and any attributes listed in ``_h5_derived``, reset to empty dicts) when pickled.
    """

    _h5: "h5py.File | None" = None
    _pid: "int | None" = None
    _h5_derived: tuple[str, ...] = ()

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None  # never pickle open HDF5 handles (spawned DataLoader workers)
        for key in self._h5_derived:
            state[key] = {}
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass
