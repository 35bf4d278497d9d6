"""What a file really is, from its first bytes, for messages about files that are not what their name says."""

from __future__ import annotations

import zlib

import nibabel as nib

from .errors import ValidationError

__all__ = ["SUPPORTED_TEXT", "GZIP_MAGIC", "describe_content", "not_a_volume", "read_head"]

SUPPORTED_TEXT = "NIfTI (.nii, .nii.gz) or NRRD (.nrrd)"
GZIP_MAGIC = b"\x1f\x8b"

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (GZIP_MAGIC, "gzip-compressed data"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"NRRD", "an NRRD file"),
)


def read_head(path: str, n: int = 1024, decompress: bool = False) -> bytes:
    """The first ``n`` bytes of ``path``, or of its gzip stream with ``decompress`` (as much as a cut one holds)."""
    with open(path, "rb") as f:
        raw = f.read(n if not decompress else 64 * 1024)
    if not decompress:
        return raw
    try:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(raw, n)
    except zlib.error:
        return b""


def describe_content(head: bytes) -> str:
    """What the first bytes of a file look like, for error messages."""
    if not head:
        return "an empty file"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    if nib.Nifti1Header.may_contain_header(head) or nib.Nifti2Header.may_contain_header(head):
        return "a NIfTI file"
    sample = head[:512]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable >= 0.95 * len(sample):
        return "a text file"
    return "unrecognised binary data"


def not_a_volume(name: str, what: str, head: bytes) -> ValidationError:
    """The error for a file named like a ``what`` whose bytes are something else."""
    return ValidationError(
        f"{name} is not a {what}: it is {describe_content(head)} "
        f"(a renamed file?). Supported formats: {SUPPORTED_TEXT}"
    )
