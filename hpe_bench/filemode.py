"""File modes of written results: what ``open(path, "w")`` would give, ``0o666 & ~umask`` (0644 by default).

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a result written to a temporary
file and renamed over its final name (``outputs.atomic_path``, ``data.h5cache.atomic_h5``,
``predict.Staging``) would be readable by its owner only: on a shared cluster file system the other members
of a group could not read metrics, predictions, tables or caches. ``share(path)`` gives the file the mode a
plain write would have, before the rename.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["current_umask", "default_file_mode", "share"]

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``, 4.7+); else
    set and restored at once under a lock (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` creates a file with."""
    return 0o666 & ~current_umask()


def share(path: str | os.PathLike) -> None:
    """Give ``path`` (a temporary file about to be renamed onto a result) the mode of a plainly written file."""
    os.chmod(Path(path), default_file_mode())
