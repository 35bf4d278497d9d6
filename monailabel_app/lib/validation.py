"""Checks on what clients send, before anything is stored, allocated or run.

Annotators upload whatever their scanner or 3D Slicer produced. Every check here reads the file's header
first and refuses from it (wrong format, 4D, 2D, too many voxels, degenerate affine) before any voxel is
read; the voxels are then streamed in chunks (never a whole array in memory) to find truncated data,
NaN/Inf, empty images and label values outside the declared ones.

Each failure raises a :class:`ValidationError` (a ``ValueError``) whose message names the problem and whose
``status_code`` is the HTTP status a server should answer with (400 bad id, 404 unknown id, 409 conflict,
413 too large, 422 unusable content). :func:`to_http_exception` turns one into a FastAPI ``HTTPException``.

Limits (environment variables, read at each call):

* ``MEDSEGDIFF_MAX_VOXELS``: most voxels in an image (default 512³).
* ``MEDSEGDIFF_MAX_UPLOAD_MB``: largest uploaded file and largest HTTP request body (default 512).

Supported formats: NIfTI-1/2 (``.nii``, ``.nii.gz``) and single-file NRRD (``.nrrd``, raw/gzip/bzip2/ascii).

Example:
    >>> info = validate_image_file("/tmp/upload.nii.gz")          # doctest: +SKIP
    >>> validate_label_file("/tmp/label.nii.gz", "/tmp/upload.nii.gz", {"brain": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "ValidationError",
    "InvalidIdError",
    "NotFoundError",
    "ConflictError",
    "TooLargeError",
    "VolumeInfo",
    "SUPPORTED_SUFFIXES",
    "DEFAULT_MAX_VOXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "MAX_ID_LENGTH",
    "MIN_AXIS_SIZE",
    "voxel_limit",
    "upload_limit_bytes",
    "volume_suffix",
    "validate_id",
    "validate_tag",
    "validate_upload_size",
    "validate_image_file",
    "validate_label_file",
    "validate_infer_image",
    "label_value_set",
    "to_http_exception",
    "UploadSizeLimitMiddleware",
    "install_asgi_middleware",
]

SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
"""File name endings accepted for images and labels (compared case-insensitively)."""
SUPPORTED_TEXT = "NIfTI (.nii, .nii.gz) or NRRD (.nrrd)"

DEFAULT_MAX_VOXELS = 512**3
DEFAULT_MAX_UPLOAD_MB = 512
MAX_ID_LENGTH = 128
MIN_AXIS_SIZE = 4
"""Smallest number of voxels along each axis of an image (a thinner one is a slice, not a volume)."""
AFFINE_TOLERANCE_MM = 0.01
"""Largest difference (mm, per affine entry) between a label's and its image's voxel-to-world matrix."""
MAX_LABEL_VALUES_REPORTED = 1000

_CHUNK_BYTES = 8 * 1024 * 1024
_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


# ------------------------------------------------------------------------------------------------ errors
class ValidationError(ValueError):
    """Something a client sent cannot be used; the message says what. ``status_code``: HTTP status to answer."""

    status_code = 422


class InvalidIdError(ValidationError):
    """An image id or label tag that is not a safe file name."""

    status_code = 400


class NotFoundError(ValidationError):
    """An image or label id the datastore does not have."""

    status_code = 404


class ConflictError(ValidationError):
    """The request would overwrite something that must be kept (e.g. an annotated image)."""

    status_code = 409


class TooLargeError(ValidationError):
    """A file, a request body or an image beyond the configured limits."""

    status_code = 413


def to_http_exception(error: ValidationError):
    """The FastAPI ``HTTPException`` (status and message) that answers ``error``."""
    from fastapi import HTTPException

    return HTTPException(status_code=error.status_code, detail=str(error))


# ------------------------------------------------------------------------------------------------ limits
def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def voxel_limit() -> int:
    """Most voxels an image may have: ``MEDSEGDIFF_MAX_VOXELS`` (default 512³)."""
    return _env_int("MEDSEGDIFF_MAX_VOXELS", DEFAULT_MAX_VOXELS)


def upload_limit_bytes() -> int:
    """Largest upload in bytes: ``MEDSEGDIFF_MAX_UPLOAD_MB`` (default 512) MiB."""
    return _env_int("MEDSEGDIFF_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024


# ------------------------------------------------------------------------------------------------ ids
def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or value == "":
        raise InvalidIdError(f"{what} is empty")
    if "\x00" in value:
        raise InvalidIdError(f"{what} {value!r} contains a NUL byte")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(f"{what} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if value.startswith("/") or re.match(r"[A-Za-z]:", value):
        raise InvalidIdError(f"{what} {value!r} is an absolute path; send a plain name")
    if ".." in value:
        raise InvalidIdError(f"{what} {value!r} contains '..' (path traversal)")
    if "/" in value or "\\" in value:
        raise InvalidIdError(f"{what} {value!r} contains a path separator ('/' or '\\')")
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidIdError(
            f"{what} {value!r} has characters other than letters, digits, '_', '-', '+' and '.' "
            "(or starts with '.', '-' or '+')"
        )
    return value


def validate_id(image_id: Any) -> str:
    """Return ``image_id`` if it is safe as a datastore file name, else raise :class:`InvalidIdError`.

    Allowed: 1 to ``MAX_ID_LENGTH`` letters, digits, ``_ - + .``, not starting with ``. - +``, no ``..``,
    and no image file ending inside (``a.nii.gz`` as an id would be stored as ``a.nii.gz.nii.gz``, which
    MONAI Label's datastore maps back to a different id).
    """
    _check_name(image_id, "image id")
    lowered = image_id.lower()
    for suffix in (*SUPPORTED_SUFFIXES, ".gz"):
        if suffix in lowered:
            raise InvalidIdError(f"image id {image_id!r} contains the file ending {suffix!r}; send the name without it")
    return image_id


def validate_tag(tag: Any) -> str:
    """Return ``tag`` if it is safe as a label folder name (same rules as ids), else raise :class:`InvalidIdError`."""
    return _check_name(tag, "label tag")


def validate_upload_size(path: str | os.PathLike, max_bytes: int | None = None) -> int:
    """Return the file size; raise :class:`TooLargeError` above ``max_bytes`` (default :func:`upload_limit_bytes`)."""
    limit = upload_limit_bytes() if max_bytes is None else max_bytes
    size = os.path.getsize(path)
    if size > limit:
        raise TooLargeError(
            f"file is {size / 2**20:.1f} MiB, more than the upload limit of {limit / 2**20:.1f} MiB "
            "(MEDSEGDIFF_MAX_UPLOAD_MB)"
        )
    return size


# ------------------------------------------------------------------------------------------------ sniffing
def volume_suffix(path: str | os.PathLike) -> str | None:
    """The supported ending of ``path`` (``.nii.gz``, ``.nii`` or ``.nrrd``, lower case), or None."""
    name = os.fspath(path).lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


def _nifti_sizeof_hdr(head: bytes) -> int | None:
    if len(head) < 4:
        return None
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size in (348, 540):
            return size
    return None


def _describe_content(head: bytes) -> str:
    """What the first bytes of a file look like, for error messages."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"NRRD"):
        return "an NRRD file"
    if _nifti_sizeof_hdr(head):
        return "a NIfTI file"
    sample = head[:512]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable >= 0.95 * len(sample):
        return "a text file"
    return "unrecognised binary data"


def _not_a_volume(name: str, what: str, head: bytes) -> ValidationError:
    return ValidationError(
        f"{name} is not a {what}: it is {_describe_content(head)} "
        f"(a renamed file?). Supported formats: {SUPPORTED_TEXT}"
    )


# ------------------------------------------------------------------------------------------------ headers
@dataclass
class _Header:
    """What a header declares, and how to stream the voxel bytes it announces."""

    format: str
    shape: tuple[int, ...]  # all axes as stored
    spatial_axes: tuple[int, ...]  # indices into ``shape`` of the spatial axes
    dtype: np.dtype
    affine: np.ndarray  # voxel (of the spatial axes) → RAS mm
    open_data: Callable[[], AbstractContextManager[BinaryIO]]  # a stream positioned at the first voxel byte
    scale: tuple[float, float] = (1.0, 0.0)  # value = raw * slope + inter
    load_array: Callable[[], np.ndarray] | None = None  # for text encodings that cannot be streamed

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open_maybe_gzip(path: str, compressed: bool) -> BinaryIO:
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _read_head(path: str, name: str, compressed: bool, n: int = 1024) -> bytes:
    try:
        with _open_maybe_gzip(path, compressed) as f:
            return f.read(n)
    except EOFError as e:
        raise ValidationError(
            f"{name} is truncated: its gzip stream ends before the NIfTI header does (an interrupted upload or copy?)"
        ) from e
    except (OSError, zlib.error) as e:
        with open(path, "rb") as f:
            raw = f.read(n)
        if compressed and not raw.startswith(b"\x1f\x8b"):
            raise _not_a_volume(name, "gzip-compressed NIfTI image (.nii.gz)", raw) from e
        raise ValidationError(f"{name}: the gzip stream is corrupt or cut off ({e})") from e


def _nifti_header(path: str, name: str) -> _Header:
    import nibabel as nib

    compressed = path.lower().endswith(".gz")
    head = _read_head(path, name, compressed)
    sizeof_hdr = _nifti_sizeof_hdr(head)
    if sizeof_hdr is None:
        with open(path, "rb") as f:
            raw = f.read(1024)
        if not compressed and raw.startswith(b"\x1f\x8b"):
            raise ValidationError(f"{name} is gzip-compressed but named .nii: name it .nii.gz")
        raise _not_a_volume(name, "NIfTI image", head if compressed else raw)
    header_class = nib.Nifti1Header if sizeof_hdr == 348 else nib.Nifti2Header
    if len(head) < sizeof_hdr:
        raise ValidationError(f"{name} is truncated: {len(head)} bytes, shorter than a NIfTI header ({sizeof_hdr})")
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:sizeof_hdr]), check=False)
    except Exception as e:  # nibabel raises several types for garbage headers
        raise ValidationError(f"{name}: unreadable NIfTI header ({e})") from e
    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in (b"n+1", b"n+2"):
        if magic in (b"ni1", b"ni2"):
            raise ValidationError(
                f"{name} is the header of a NIfTI .hdr/.img pair; upload a single-file .nii or .nii.gz"
            )
        raise ValidationError(f"{name}: invalid NIfTI magic {magic!r} (expected 'n+1' or 'n+2')")
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
    except Exception as e:
        raise ValidationError(f"{name}: invalid NIfTI header ({e})") from e
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as e:
        raise ValidationError(f"{name}: invalid voxel-to-world transform in the header ({e})") from e
    slope, inter = header.get_slope_inter()
    scale = (1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter))

    @contextmanager
    def open_data() -> Iterator[BinaryIO]:
        with _open_maybe_gzip(path, compressed) as f:
            if compressed:
                _skip(f, offset)
            else:
                f.seek(offset)
            yield f

    return _Header("NIfTI", shape, tuple(range(min(3, len(shape)))), dtype, affine, open_data, scale)


_NRRD_TYPES = {
    "int8": ("signed char", "int8", "int8_t"),
    "uint8": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "int16": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "uint16": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "int32": ("int", "signed int", "int32", "int32_t"),
    "uint32": ("uint", "unsigned int", "uint32", "uint32_t"),
    "int64": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "uint64": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "float32": ("float",),
    "float64": ("double",),
}
_NRRD_TYPE_TO_NUMPY = {alias: np.dtype(name) for name, aliases in _NRRD_TYPES.items() for alias in aliases}
_NRRD_SPACE_FLIPS = {  # sign of each world axis to turn the NRRD space into RAS
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


def _nrrd_header(path: str, name: str) -> _Header:
    import nrrd

    with open(path, "rb") as f:
        head = f.read(65536)
    if not head.startswith(b"NRRD000"):
        raise _not_a_volume(name, "NRRD image", head)
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0), default=-1)
    if end < 0:
        raise ValidationError(f"{name}: NRRD header has no end (blank line) in its first 64 KiB")
    offset = end + (2 if head[end : end + 2] == b"\n\n" else 4)
    try:
        fields = nrrd.read_header(io.BytesIO(head[:offset]))
    except Exception as e:
        raise ValidationError(f"{name}: unreadable NRRD header ({e})") from e
    if "data file" in fields or "datafile" in fields:
        raise ValidationError(f"{name} is a detached NRRD header (data in another file); save it as a single .nrrd")
    type_name = str(fields.get("type", "")).strip().lower()
    if type_name not in _NRRD_TYPE_TO_NUMPY:
        raise ValidationError(f"{name}: unsupported NRRD voxel type {type_name!r}")
    dtype = _NRRD_TYPE_TO_NUMPY[type_name]
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if str(fields.get("endian", "little")).lower() == "big" else "<")
    shape = tuple(int(s) for s in fields.get("sizes", ()))
    if int(fields.get("line skip", 0) or 0) or int(fields.get("byte skip", 0) or 0):
        raise ValidationError(f"{name}: NRRD 'line skip' / 'byte skip' are not supported")

    # Spatial axes: those with a space direction (rows of NaN mark the others), else every axis.
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

    encoding = str(fields.get("encoding", "raw")).lower()

    @contextmanager
    def open_data() -> Iterator[BinaryIO]:
        with open(path, "rb") as raw:
            raw.seek(offset)
            if encoding == "raw":
                yield raw
                return
            compressed = gzip.GzipFile(fileobj=raw, mode="rb") if encoding in ("gzip", "gz") else bz2.BZ2File(raw)
            with compressed as stream:
                yield stream

    load_array = None
    if encoding in ("ascii", "text", "txt"):

        def load_array() -> np.ndarray:
            data, _ = nrrd.read(path, index_order="F")
            return np.asarray(data, dtype=dtype).ravel(order="F")

    elif encoding not in ("raw", "gzip", "gz", "bzip2", "bz2"):
        raise ValidationError(f"{name}: unsupported NRRD encoding {encoding!r} (use raw or gzip)")
    return _Header("NRRD", shape, spatial, dtype, affine, open_data, load_array=load_array)


def _read_header(path: str, name: str) -> _Header:
    suffix = volume_suffix(path)
    if suffix is None:
        with open(path, "rb") as f:
            head = f.read(1024)
        raise ValidationError(
            f"{name}: unsupported file type ({_describe_content(head)}); "
            f"supported formats: {SUPPORTED_TEXT}"
        )
    return _nrrd_header(path, name) if suffix == ".nrrd" else _nifti_header(path, name)


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, _CHUNK_BYTES)))
        if not got:
            return
        n -= got


# ------------------------------------------------------------------------------------------------ geometry
def _spatial_shape(header: _Header, name: str) -> tuple[int, int, int]:
    """The 3 spatial sizes; refuses 4D / multi-component data, 2D images and single voxels."""
    shape = header.shape
    if any(s <= 0 for s in shape):
        raise ValidationError(f"{name}: the header declares an empty image (shape {_fmt(shape)})")
    extra = [shape[i] for i in range(len(shape)) if i not in header.spatial_axes]
    if any(s > 1 for s in extra):
        if header.format == "NIfTI" and len(shape) >= 4:
            raise ValidationError(
                f"{name} is a 4D volume (shape {_fmt(shape)}, {math.prod(shape[3:])} volumes): "
                "send one 3D volume"
            )
        raise ValidationError(
            f"{name} has {math.prod(extra)} components per voxel (shape {_fmt(shape)}): send a scalar 3D volume"
        )
    spatial = [shape[i] for i in header.spatial_axes]
    if all(s == 1 for s in spatial):
        raise ValidationError(f"{name} is a single voxel (shape {_fmt(shape)}): send a 3D volume")
    if len(spatial) < 3 or any(s == 1 for s in spatial):
        raise ValidationError(f"{name} is a 2D image (shape {_fmt(shape)}): send a 3D volume")
    if len(spatial) > 3:
        raise ValidationError(f"{name} has {len(spatial)} spatial axes (shape {_fmt(shape)}): send a 3D volume")
    if any(s < MIN_AXIS_SIZE for s in spatial):
        raise ValidationError(
            f"{name} is too thin (shape {_fmt(shape)}): every axis needs at least {MIN_AXIS_SIZE} voxels"
        )
    return spatial[0], spatial[1], spatial[2]


def _check_affine(affine: np.ndarray, name: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) of a usable voxel-to-world matrix; oblique and anisotropic grids are fine."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValidationError(f"{name}: the voxel-to-world affine has NaN or infinite entries")
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing < 1e-6) or np.any(spacing > 1e5):
        raise ValidationError(
            f"{name}: degenerate voxel-to-world affine (voxel sizes {np.round(spacing, 6).tolist()} mm): "
            "the affine is not invertible"
        )
    directions = matrix / spacing
    if abs(np.linalg.det(directions)) < 1e-3:
        raise ValidationError(
            f"{name}: degenerate voxel-to-world affine (its axes are collinear, determinant "
            f"{np.linalg.det(matrix):.3g}): the affine is not invertible"
        )
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def _fmt(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# ------------------------------------------------------------------------------------------------ voxels
@dataclass
class _VoxelStats:
    minimum: float = math.inf
    maximum: float = -math.inf
    nan: int = 0
    inf: int = 0
    non_integer: float | None = None  # an example value
    values: set = field(default_factory=set)
    too_many_values: bool = False


def _iter_voxels(header: _Header, name: str) -> Iterator[np.ndarray]:
    """The raw voxel values in chunks; raises when the file holds fewer bytes than the header declares."""
    expected = header.data_bytes
    if header.load_array is not None:
        try:
            array = header.load_array()
        except Exception as e:
            raise ValidationError(f"{name}: unreadable NRRD text data ({e})") from e
        if array.size < math.prod(header.shape):
            raise _truncated(name, expected, array.size * header.dtype.itemsize)
        yield array
        return
    itemsize = header.dtype.itemsize
    chunk = max(itemsize, _CHUNK_BYTES // itemsize * itemsize)
    got = 0
    try:
        with header.open_data() as f:
            while got < expected:
                data = f.read(min(chunk, expected - got))
                if not data:
                    break
                got += len(data)
                usable = len(data) // itemsize * itemsize
                if usable:
                    yield np.frombuffer(data[:usable], dtype=header.dtype)
    except EOFError as e:  # gzip/bzip2 stream cut off
        raise _truncated(name, expected, got, str(e)) from e
    except (OSError, zlib.error) as e:
        raise ValidationError(f"{name}: the compressed voxel data is corrupt ({e})") from e
    if got < expected:
        raise _truncated(name, expected, got)


def _truncated(name: str, expected: int, got: int, detail: str = "") -> ValidationError:
    extra = f"; {detail}" if detail else ""
    return ValidationError(
        f"{name} is truncated: the header declares {expected} bytes of voxel data but the file holds only "
        f"{got} (an interrupted upload or copy?){extra}"
    )


def _scan_voxels(header: _Header, name: str, collect_values: bool) -> _VoxelStats:
    stats = _VoxelStats()
    slope, inter = header.scale
    is_float = header.dtype.kind == "f"
    for raw in _iter_voxels(header, name):
        values = raw
        if is_float:
            finite = np.isfinite(raw)
            if not finite.all():
                stats.nan += int(np.isnan(raw).sum())
                stats.inf += int((~finite).sum() - np.isnan(raw).sum())
                values = raw[finite]
        if values.size == 0:
            continue
        low, high = float(values.min()), float(values.max())
        low, high = sorted((low * slope + inter, high * slope + inter))
        stats.minimum, stats.maximum = min(stats.minimum, low), max(stats.maximum, high)
        if collect_values and not stats.too_many_values:
            unique = np.unique(values).astype(np.float64) * slope + inter
            if stats.non_integer is None:
                fractional = unique[unique != np.round(unique)]
                if fractional.size:
                    stats.non_integer = float(fractional[0])
            stats.values.update(unique.tolist())
            if len(stats.values) > MAX_LABEL_VALUES_REPORTED:
                stats.too_many_values = True
    return stats


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class VolumeInfo:
    """What a valid image or label file holds.

    Attributes:
        path: the file.
        format: ``"NIfTI"`` or ``"NRRD"``.
        shape: the 3 spatial sizes (singleton extra axes dropped).
        spacing: voxel sizes in mm.
        affine: voxel → RAS (mm) 4×4 matrix.
        dtype: voxel type as stored.
        minimum, maximum: range of the (scaled, finite) values.
        values: the distinct values of a label (empty for images and maps).
    """

    path: str
    format: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    dtype: str
    minimum: float
    maximum: float
    values: tuple[int, ...] = ()


def _checked_header(
    path: str, name: str, max_vox: float
) -> tuple[_Header, tuple[int, int, int], tuple[float, float, float]]:
    header = _read_header(path, name)
    shape = _spatial_shape(header, name)
    total = math.prod(header.shape)
    if total > max_vox:
        raise TooLargeError(
            f"{name} has {total:,} voxels ({_fmt(header.shape)}), more than the limit of {max_vox:,} voxels "
            "(MEDSEGDIFF_MAX_VOXELS): image size refused before reading it"
        )
    if header.dtype.kind not in "iuf":
        raise ValidationError(f"{name}: unsupported voxel type {header.dtype} (RGB, complex, ...); send scalar voxels")
    spacing = _check_affine(header.affine, name)
    return header, shape, spacing


def validate_image_file(
    path: str | os.PathLike,
    max_voxels: int | None = None,
    max_bytes: int | None = None,
    name: str | None = None,
) -> VolumeInfo:
    """Check an uploaded image; return what it holds or raise :class:`ValidationError` naming the problem.

    Refused: unsupported or renamed files (text, PNG, random bytes), files over ``max_bytes``, headers
    declaring more than ``max_voxels`` (before any voxel is read), 4D/multi-component, 2D, single-voxel or
    thinner-than-``MIN_AXIS_SIZE`` volumes, non-scalar voxel types, degenerate (non-invertible) affines,
    truncated voxel data, NaN/Inf voxels, and constant images (e.g. all zero). Oblique and anisotropic
    grids are valid. Memory use is bounded by one chunk of voxels, whatever the image size.

    Args:
        path: the file (its name must end with ``.nii``, ``.nii.gz`` or ``.nrrd``).
        max_voxels: most voxels; default ``MEDSEGDIFF_MAX_VOXELS`` or 512³.
        max_bytes: largest file; default ``MEDSEGDIFF_MAX_UPLOAD_MB`` or 512 MiB.
        name: how messages call the file (default: its file name).
    """
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise NotFoundError(f"{name}: no such file")
    validate_upload_size(path, max_bytes)
    limit = voxel_limit() if max_voxels is None else max_voxels
    header, shape, spacing = _checked_header(path, name, limit)
    stats = _scan_voxels(header, name, collect_values=False)
    if stats.nan or stats.inf:
        raise ValidationError(
            f"{name} has {stats.nan} NaN and {stats.inf} infinite voxels: fix or mask them before upload"
        )
    if stats.minimum == stats.maximum:
        what = "zero (an empty image)" if stats.minimum == 0 else f"{stats.minimum:g} (a constant image)"
        raise ValidationError(f"{name}: every voxel is {what}; nothing to segment")
    dtype = str(header.dtype)
    return VolumeInfo(path, header.format, shape, spacing, header.affine, dtype, stats.minimum, stats.maximum)


def label_value_set(labels: Mapping[str, int] | Iterable[int]) -> frozenset[int]:
    """Allowed label values: a ``{name: value}`` dict (MONAI Label's ``labels``) gets 0 added for background."""
    if isinstance(labels, Mapping):
        return frozenset({0, *(int(v) for v in labels.values())})
    return frozenset(int(v) for v in labels)


def validate_label_file(
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
    allowed_values: Mapping[str, int] | Iterable[int] | None,
    max_bytes: int | None = None,
    affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
    name: str | None = None,
) -> VolumeInfo:
    """Check a label against its image; return what it holds or raise :class:`ValidationError`.

    Refused: everything :func:`validate_image_file` refuses about the file itself (except an all-zero
    label, which is a valid "nothing here"), a shape or voxel-to-world affine (beyond
    ``affine_tolerance_mm`` per entry) different from the image's, NaN/Inf, non-integer values, and values
    outside ``allowed_values``.

    Args:
        label_path: the label file.
        image_path: the image it annotates (its header is read, not its voxels).
        allowed_values: label values (e.g. ``{0, 1}``), or ``{name: value}`` (0 added), or None for a
            continuous map such as an uncertainty map (only geometry and finiteness are checked).
        max_bytes: largest file; default ``MEDSEGDIFF_MAX_UPLOAD_MB``.
        affine_tolerance_mm: largest difference per affine entry.
        name: how messages call the label file (default: its file name).
    """
    label_path, image_path = os.fspath(label_path), os.fspath(image_path)
    name = name or os.path.basename(label_path)
    if not os.path.isfile(label_path):
        raise NotFoundError(f"{name}: no such file")
    validate_upload_size(label_path, max_bytes)
    image, image_shape, _ = _checked_header(image_path, "the image", math.inf)
    # The label may not be larger than its image, so the image bounds its voxel count.
    label, shape, spacing = _checked_header(label_path, name, max(math.prod(image.shape), 1))
    if shape != image_shape:
        raise ValidationError(f"{name}: label shape {_fmt(shape)} does not match the image shape {_fmt(image_shape)}")
    difference = float(np.max(np.abs(label.affine[:3] - image.affine[:3])))
    if difference > affine_tolerance_mm:
        raise ValidationError(
            f"{name}: label affine does not match the image affine (largest difference {difference:.4g} mm, "
            f"tolerance {affine_tolerance_mm} mm): it was drawn on another grid"
        )
    allowed = None if allowed_values is None else label_value_set(allowed_values)
    stats = _scan_voxels(label, name, collect_values=allowed is not None)
    if stats.nan or stats.inf:
        raise ValidationError(f"{name} has {stats.nan} NaN and {stats.inf} infinite values")
    values: tuple[int, ...] = ()
    if allowed is not None:
        if stats.non_integer is not None:
            raise ValidationError(f"{name} has non-integer values (e.g. {stats.non_integer:g}): a label holds integers")
        if stats.too_many_values:
            raise ValidationError(
                f"{name} has more than {MAX_LABEL_VALUES_REPORTED} distinct values: an image, not a label? "
                f"Allowed label values: {sorted(allowed)}"
            )
        values = tuple(sorted(int(v) for v in stats.values))
        outside = sorted(set(values) - allowed)
        if outside:
            raise ValidationError(f"{name} has label values {outside} outside the declared labels {sorted(allowed)}")
    dtype = str(label.dtype)
    return VolumeInfo(
        label_path, label.format, shape, spacing, label.affine, dtype, stats.minimum, stats.maximum, values
    )


def validate_infer_image(image: Any, known_ids: Iterable[str]) -> str:
    """Check the ``image`` of an infer request before the task reads it.

    MONAI Label's ``infer`` uses ``request["image"]`` as a file path whenever such a path exists on the
    server, so ``?image=/etc/...`` (or ``"image"`` in the JSON params) would read any server file. Allowed:
    a datastore id from ``known_ids``, or a file uploaded with the request (the endpoint saves it as
    ``<tempdir>/tmp*``; it is then validated like an upload).

    Returns:
        ``image`` unchanged (also when it is not a string: an array passed in-process, never over HTTP).
    """
    if not isinstance(image, str):
        return image
    if image in set(known_ids):
        return image
    if os.path.isabs(image):
        folder = os.path.realpath(tempfile.gettempdir())
        real = os.path.realpath(image)
        if os.path.dirname(real) == folder and os.path.basename(real).startswith("tmp") and os.path.isfile(real):
            validate_image_file(real, name="uploaded image")
            return image
        raise InvalidIdError("image must be a datastore image id or an uploaded file, not a server path")
    validate_id(image)
    raise NotFoundError(f"image {image!r} is not in the datastore")


# ------------------------------------------------------------------------------------------------ HTTP
class UploadSizeLimitMiddleware:
    """ASGI middleware: answers 413 to request bodies larger than ``max_bytes``.

    A ``Content-Length`` above the limit is refused before any body byte is read; a body without one
    (chunked) is counted while the app reads it and cut off at the limit. Other requests pass untouched.

    Args:
        app: the ASGI app to wrap.
        max_bytes: the limit; default :func:`upload_limit_bytes` (read once, at construction).
        methods: HTTP methods whose bodies are limited.
    """

    def __init__(self, app, max_bytes: int | None = None, methods: Iterable[str] = ("POST", "PUT", "PATCH")) -> None:
        self.app = app
        self.max_bytes = upload_limit_bytes() if max_bytes is None else int(max_bytes)
        self.methods = {m.upper() for m in methods}

    def _detail(self, size: int | None) -> str:
        got = "" if size is None else f"{size / 2**20:.1f} MiB, "
        return f"request body is too large ({got}limit {self.max_bytes / 2**20:.1f} MiB, MEDSEGDIFF_MAX_UPLOAD_MB)"

    async def _refuse(self, send, size: int | None) -> None:
        body = json.dumps({"detail": self._detail(size)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method", "").upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return

        from starlette.exceptions import HTTPException

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException: FastAPI's body parsing re-raises it and answers 413
                    raise HTTPException(status_code=413, detail=self._detail(None))
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except HTTPException as e:
            if e.status_code != 413 or started:
                raise
            await self._refuse(send, None)


def install_asgi_middleware(asgi_app, middleware_class, **kwargs) -> bool:
    """Wrap an already started Starlette/FastAPI app's middleware stack in ``middleware_class``.

    MONAI Label builds ``monailabel.app:app`` and starts it before it loads the app's ``main.py``, so
    ``app.add_middleware`` raises "Cannot add middleware after an application has started". Replacing the
    built stack works for every later request. Idempotent: returns False when already installed.
    """
    stack = asgi_app.middleware_stack
    if stack is None:
        asgi_app.add_middleware(middleware_class, **kwargs)
        return True
    layer = stack
    while layer is not None:
        if isinstance(layer, middleware_class):
            return False
        layer = getattr(layer, "app", None)
    asgi_app.middleware_stack = middleware_class(stack, **kwargs)
    return True
