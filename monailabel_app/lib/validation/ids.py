"""Limits from the environment, and the names clients may use for images and label tags."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import InvalidIdError, TooLargeError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "DEFAULT_MAX_VOXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "MAX_ID_LENGTH",
    "voxel_limit",
    "upload_limit_bytes",
    "volume_suffix",
    "validate_id",
    "validate_tag",
    "validate_upload_size",
]

SUPPORTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
"""File name endings accepted for images and labels (compared case-insensitively)."""

DEFAULT_MAX_VOXELS = 512**3
DEFAULT_MAX_UPLOAD_MB = 512
MAX_ID_LENGTH = 128

_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


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


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The supported ending of ``path`` (``.nii.gz``, ``.nii`` or ``.nrrd``, lower case), or None."""
    name = os.fspath(path).lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


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
