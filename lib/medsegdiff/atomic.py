"""Atomic file replacement: write under a hidden temporary name next to the target, fsync, then ``os.replace``.

A crash or a kill leaves the old file or the new one, never a half-written one. What it can leave is the
hidden temporary file, ``.<name>.<12 hex digits>.part``, which no datastore pattern (``*.nii.gz``, ``*.pt``, …)
matches and which :func:`remove_stale_temp_files` deletes later.

Used by checkpoints, the sample datastore builder and the MONAI Label app's datastore.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "atomic_path", "atomic_write_bytes", "atomic_copy", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"
_TEMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{12}\.part$")


@contextmanager
def atomic_path(path: str | Path, suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
    """Yield a fresh hidden path next to ``path`` to write the new file to.

    When the block ends without an error the file is flushed to disk and renamed over ``path``; on an error
    (or a ``KeyboardInterrupt``) it is removed and ``path`` is left as it was. The parent folder is created.

    Args:
        path: the file to replace (or create).
        suffix: ending of the temporary name; a writer that picks its format from the name (nibabel) needs
            the real ending after it, e.g. ``".part.nii.gz"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Replace ``path`` with a copy of ``source`` atomically (streamed in 1 MiB blocks)."""
    with atomic_path(path) as tmp, open(source, "rb") as src, open(tmp, "xb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def remove_stale_temp_files(folder: str | Path, max_age_s: float) -> list[str]:
    """Delete the temporary files of :func:`atomic_path` (``TEMP_SUFFIX``) under ``folder`` older than ``max_age_s``.

    Only names of that exact pattern are touched. A younger one may belong to a write still in progress in
    another process, so choose ``max_age_s`` well above the longest write. Returns the removed paths.
    """
    removed = []
    now = time.time()
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if _TEMP_PATTERN.match(name) and now - os.path.getmtime(path) > max_age_s:
                    os.remove(path)
                    removed.append(path)
            except FileNotFoundError:  # removed meanwhile by another process
                continue
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted write: %s", len(removed), removed)
    return removed
