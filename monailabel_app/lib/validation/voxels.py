"""One pass over a volume's voxels, slab by slab through nibabel's ``ArrayProxy``: NaN/Inf, range, label values.

Memory is bounded by one slab (about 8 MiB of stored voxels), whatever the volume's size; a file holding fewer
voxel bytes than its header declares is reported as truncated, with both numbers.
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import nrrd
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from .errors import ValidationError
from .headers import VolumeHeader

__all__ = ["MAX_LABEL_VALUES_REPORTED", "VoxelStats", "open_voxels", "scan_voxels", "stored_bytes"]

MAX_LABEL_VALUES_REPORTED = 1000
_SLAB_BYTES = 8 * 1024 * 1024
_READ_ERRORS = (EOFError, OSError, ValueError, zlib.error)


@dataclass
class VoxelStats:
    """What one pass over the (scaled) voxels found."""

    minimum: float = math.inf
    maximum: float = -math.inf
    nan: int = 0
    inf: int = 0
    non_integer: float | None = None  # an example value
    values: set = field(default_factory=set)
    too_many_values: bool = False

    def add(self, values: np.ndarray, collect_values: bool) -> None:
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                nan = int(np.isnan(values).sum())
                self.nan += nan
                self.inf += int(finite.size - finite.sum()) - nan
                values = values[finite]
        if values.size == 0:
            return
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if collect_values and not self.too_many_values:
            unique = np.unique(values).astype(np.float64)
            if self.non_integer is None:
                fractional = unique[unique != np.round(unique)]
                if fractional.size:
                    self.non_integer = float(fractional[0])
            self.values.update(unique.tolist())
            self.too_many_values = len(self.values) > MAX_LABEL_VALUES_REPORTED


_STREAMS = {"gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "bzip2": bz2.BZ2File}
_DECOMPRESSORS = {"gzip": lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), "bzip2": bz2.BZ2Decompressor}


@contextmanager
def open_voxels(header: VolumeHeader) -> Iterator[Any]:
    """The (scaled) voxels as a nibabel ``ArrayProxy`` over one open stream (a numpy array for text voxels).

    Slabs read in order only ever seek forward, so a compressed stream is decompressed once.
    """
    with open(header.path, "rb") as f:
        f.seek(header.stream_start)
        if header.text:  # text cannot be sliced: pynrrd reads it whole
            try:
                data = nrrd.read_data(header.header_fields, f, header.path, index_order="F")
            except Exception as e:  # pynrrd's NRRDError, ValueError, ...
                raise ValueError(f"unreadable NRRD text data ({e})") from e
            yield np.asarray(data, dtype=header.dtype).reshape(header.shape, order="F")
            return
        stream = _STREAMS[header.compression](f) if header.compression else f
        try:
            yield ArrayProxy(stream, (header.shape, header.dtype, header.voxel_offset, *header.scale), order="F")
        finally:
            stream.close()


def stored_bytes(header: VolumeHeader) -> int:
    """How many voxel bytes the file really holds (decompresses a compressed stream up to its end or its cut)."""
    if header.compression is None:
        return max(os.path.getsize(header.path) - header.voxel_offset, 0)
    decompressor, total = _DECOMPRESSORS[header.compression](), 0
    with open(header.path, "rb") as f:
        f.seek(header.stream_start)
        try:
            while (block := f.read(_SLAB_BYTES)) and not decompressor.eof:
                total += len(decompressor.decompress(block))
        except (OSError, ValueError, zlib.error):  # corrupt data: what came before it counts
            pass
    return max(total - header.voxel_offset, 0)


def _slabs(voxels: Any, shape: tuple[int, ...], itemsize: int) -> Iterator[np.ndarray]:
    """Consecutive slabs along the slowest-varying axis that is not a singleton (contiguous in the file)."""
    axis = max((i for i, s in enumerate(shape) if s > 1), default=0)
    step = max(1, _SLAB_BYTES // max(math.prod(shape[:axis]) * itemsize, 1))
    for start in range(0, shape[axis], step):
        yield np.asarray(voxels[(slice(None),) * axis + (slice(start, start + step),)])


def truncated(name: str, expected: int, got: int) -> ValidationError:
    return ValidationError(
        f"{name} is truncated: the header declares {expected} bytes of voxel data but the file holds only "
        f"{got} (an interrupted upload or copy?)"
    )


def scan_voxels(header: VolumeHeader, name: str, collect_values: bool) -> VoxelStats:
    """Go through every voxel once; ``collect_values`` also gathers the distinct values (for labels)."""
    stats = VoxelStats()
    try:
        with open_voxels(header) as voxels:
            for slab in _slabs(voxels, header.shape, header.dtype.itemsize):
                stats.add(slab, collect_values)
    except _READ_ERRORS as e:  # nibabel: "Expected N bytes, got M"; gzip/bzip2: stream cut off or corrupt
        got = stored_bytes(header)
        if got < header.data_bytes:
            raise truncated(name, header.data_bytes, got) from e
        raise ValidationError(f"{name}: the voxel data is unreadable or corrupt ({e})") from e
    return stats
