"""Image headers read with the libraries (nibabel for NIfTI, pynrrd for NRRD), before any voxel is read.

A :class:`VolumeHeader` says what a file declares (shape, voxel type, voxel-to-RAS affine, scaling) and where
its voxel stream is (compression, offsets), so that :mod:`.voxels` can read it slab by slab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import nrrd
import numpy as np

from .errors import ValidationError
from .ids import volume_suffix
from .sniff import GZIP_MAGIC, SUPPORTED_TEXT, describe_content, not_a_volume, read_head

__all__ = ["VolumeHeader", "read_header"]

_NIFTI_HEADERS = (nib.Nifti1Header, nib.Nifti2Header)
_NRRD_TEXT_ENCODINGS = ("ascii", "text", "txt")
_NRRD_COMPRESSION = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
_NRRD_SPACE_FLIPS = {  # sign of each world axis to turn the NRRD space into RAS
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


@dataclass
class VolumeHeader:
    """What a header declares, and where the voxels it announces are.

    Attributes:
        format: ``"NIfTI"`` or ``"NRRD"``.
        path: the file.
        shape: all axes as stored (Fortran order).
        spatial_axes: indices into ``shape`` of the spatial axes.
        dtype: voxel type as stored.
        affine: voxel (of the spatial axes) → RAS mm.
        scale: ``(slope, intercept)``: value = stored * slope + intercept.
        compression: ``None``, ``"gzip"`` or ``"bzip2"``: how the data stream is compressed.
        stream_start: byte of the file where the (compressed or text) data stream starts.
        voxel_offset: byte of the (decompressed) stream, or of an uncompressed file, where the first voxel starts.
        text: the voxels are written as text (NRRD ``ascii``): they can only be read whole.
        header_fields: the NRRD header as pynrrd read it (for reading text voxels).
    """

    format: str
    path: str
    shape: tuple[int, ...]
    spatial_axes: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray
    scale: tuple[float, float] = (1.0, 0.0)
    compression: str | None = None
    stream_start: int = 0
    voxel_offset: int = 0
    text: bool = False
    header_fields: dict[str, Any] | None = None

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: str, name: str) -> VolumeHeader:
    """The header of a ``.nii``, ``.nii.gz`` or ``.nrrd`` file; raises :class:`ValidationError` naming the problem."""
    suffix = volume_suffix(path)
    if suffix is None:
        raise ValidationError(
            f"{name}: unsupported file type ({describe_content(read_head(path))}); supported formats: {SUPPORTED_TEXT}"
        )
    return _nrrd_header(path, name) if suffix == ".nrrd" else _nifti_header(path, name, suffix == ".nii.gz")


# ------------------------------------------------------------------------------------------------ NIfTI
def _nifti_header(path: str, name: str, compressed: bool) -> VolumeHeader:
    raw = read_head(path)
    if compressed and not raw.startswith(GZIP_MAGIC):
        raise not_a_volume(name, "gzip-compressed NIfTI image (.nii.gz)", raw)
    if not compressed and raw.startswith(GZIP_MAGIC):
        raise ValidationError(f"{name} is gzip-compressed but named .nii: name it .nii.gz")
    head = read_head(path, decompress=True) if compressed else raw
    try:
        img = nib.load(path)
    except EOFError as e:
        raise ValidationError(
            f"{name} is truncated: its gzip stream ends before the NIfTI header does (an interrupted upload or copy?)"
        ) from e
    except Exception as e:  # nibabel raises ImageFileError, HeaderDataError, OSError, ... for what it cannot read
        declared = next((h.sizeof_hdr for h in _NIFTI_HEADERS if _declares_size(head, h.sizeof_hdr)), None)
        if declared is not None and len(head) < declared:
            raise ValidationError(
                f"{name} is truncated: {len(head)} bytes, shorter than a NIfTI header ({declared})"
            ) from e
        if declared is None:
            raise not_a_volume(name, "NIfTI image", head) from e
        raise ValidationError(f"{name}: unreadable NIfTI header ({e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise not_a_volume(name, "NIfTI image", head)
    header = img.header
    stored = type(header)(head[: header.sizeof_hdr], check=False)  # as stored: nibabel's copy says "n+1" for .nii
    if bytes(stored["magic"]).rstrip(b"\x00") in (b"ni1", b"ni2"):
        raise ValidationError(f"{name} is the header of a NIfTI .hdr/.img pair; upload a single-file .nii or .nii.gz")
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as e:
        raise ValidationError(f"{name}: invalid voxel-to-world transform in the header ({e})") from e
    proxy = img.dataobj  # what nibabel will read: shape, type, offset (fixed up for single files), scaling
    return VolumeHeader(
        "NIfTI", path, tuple(int(n) for n in proxy.shape), tuple(range(min(3, len(proxy.shape)))),
        np.dtype(proxy.dtype), affine, (float(proxy.slope), float(proxy.inter)),
        compression="gzip" if compressed else None, voxel_offset=int(proxy.offset),
    )  # fmt: skip


def _declares_size(head: bytes, sizeof_hdr: int) -> bool:
    """Do the first 4 bytes hold ``sizeof_hdr`` (either byte order), as a NIfTI header starts?"""
    return len(head) >= 4 and sizeof_hdr in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))


# ------------------------------------------------------------------------------------------------ NRRD
def _nrrd_header(path: str, name: str) -> VolumeHeader:
    head = read_head(path)
    if not head.startswith(b"NRRD000"):
        raise not_a_volume(name, "NRRD image", head)
    with open(path, "rb") as f:
        try:
            fields = nrrd.read_header(f)
        except Exception as e:  # pynrrd raises NRRDError, ValueError, ... for broken headers
            raise ValidationError(f"{name}: unreadable NRRD header ({e})") from e
        offset = f.tell()  # read_header leaves the file at the first data byte
    if "data file" in fields or "datafile" in fields:
        raise ValidationError(f"{name} is a detached NRRD header (data in another file); save it as a single .nrrd")
    if int(fields.get("line skip", 0) or 0) or int(fields.get("byte skip", 0) or 0):
        raise ValidationError(f"{name}: NRRD 'line skip' / 'byte skip' are not supported")
    encoding = str(fields.get("encoding", "raw")).lower()
    if encoding not in _NRRD_COMPRESSION and encoding not in _NRRD_TEXT_ENCODINGS:
        raise ValidationError(f"{name}: unsupported NRRD encoding {encoding!r} (use raw or gzip)")
    try:
        dtype = nrrd.reader._determine_datatype(fields)  # pynrrd's own type table (pinned pynrrd version)
    except Exception as e:
        raise ValidationError(f"{name}: unsupported NRRD voxel type {fields.get('type')!r} ({e})") from e
    shape = tuple(int(s) for s in fields.get("sizes", ()))
    spatial, affine = _nrrd_geometry(fields, shape, name)

    compression, text = _NRRD_COMPRESSION.get(encoding), encoding in _NRRD_TEXT_ENCODINGS
    return VolumeHeader(
        "NRRD", path, shape, spatial, dtype, affine, compression=compression,
        stream_start=offset, voxel_offset=0 if compression or text else offset, text=text, header_fields=dict(fields),
    )  # fmt: skip


def _nrrd_geometry(fields: dict, shape: tuple[int, ...], name: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial axes (those with a space direction; every axis without directions) and the voxel → RAS affine."""
    directions = fields.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)
        spatial = tuple(i for i, row in enumerate(directions) if np.all(np.isfinite(row)))
        matrix = directions[list(spatial)].T if spatial else np.zeros((3, 0))
    else:
        spatial = tuple(range(len(shape)))
        spacings = np.asarray(fields.get("spacings", [1.0] * len(shape)), dtype=np.float64)
        matrix = np.diag(np.where(np.isfinite(spacings), spacings, 1.0))
    origin = np.asarray(fields.get("space origin", np.zeros(matrix.shape[0])), dtype=np.float64)
    affine = np.eye(4)
    if matrix.shape == (3, 3) and origin.shape == (3,):
        affine[:3, :3], affine[:3, 3] = matrix, origin
        flips = _NRRD_SPACE_FLIPS.get(str(fields.get("space", "")).lower(), (1, 1, 1))
        affine[:3] *= np.asarray(flips, dtype=np.float64)[:, None]
    elif len(spatial) == 3:
        raise ValidationError(f"{name}: NRRD 'space directions' / 'space origin' are not 3D")
    return spatial, affine
