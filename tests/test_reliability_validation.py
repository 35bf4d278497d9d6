"""Upload validation, the safe datastore and the capacity gate, without a server (fast).

A corpus of bad inputs is generated in ``tmp_path`` (what annotators' scanners and 3D Slicer really produce
when something goes wrong: renamed files, cut-off uploads, 4D series, single slices, empty or NaN volumes,
broken affines, huge headers); each must be refused with a message that names the problem, and a refused
write must leave the datastore byte-identical. ``corpus_*`` helpers are reused by test_reliability_server.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from fastapi import FastAPI, HTTPException, UploadFile
from starlette.testclient import TestClient

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.capacity import InferenceGate, InferenceGateMiddleware, ServerBusy  # noqa: E402
from lib.safe_datastore import SafeLocalDatastore  # noqa: E402
from lib.validation import (  # noqa: E402
    InvalidIdError,
    NotFoundError,
    TooLargeError,
    UploadSizeLimitMiddleware,
    ValidationError,
    install_asgi_middleware,
    validate_id,
    validate_image_file,
    validate_infer_image,
    validate_label_file,
    validate_tag,
)

PNG_BYTES = (  # a real 1x1 PNG: signature, IHDR, IDAT, IEND
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
SHAPE = (16, 16, 12)
SPACING = (1.0, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------- corpus
def head_phantom(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    """A bright ellipsoid in a dim box: non-constant, integer-valued."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.5
    return (100 + 900 * inside).astype(dtype)


def affine_for(spacing=SPACING, rotation=None, origin=(-8.0, -8.0, -12.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, c = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = affine_for() if affine is None else affine
    if abs(np.linalg.det(affine[:3, :3])) > 1e-6:
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
    else:  # a qform cannot hold a degenerate matrix: write it as the sform only
        img = nib.Nifti1Image(data, None)
        img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes (header + voxels)."""
    img = nib.Nifti1Image(data, affine_for() if affine is None else affine)
    return img.to_bytes()


def write_nrrd(path: Path, data: np.ndarray, affine_ras: np.ndarray | None = None, **extra) -> Path:
    """NRRD in LPS space, the way 3D Slicer writes it."""
    affine = affine_for() if affine_ras is None else affine_ras
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:, :3].T,
        "space origin": lps[:, 3],
        "encoding": "gzip",
        **extra,
    }
    nrrd.write(str(path), data, header, index_order="F")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _huge_header(path: Path) -> Path:
    """A 1000³ int16 header followed by 10 data bytes (what a 2 GB volume cut at the start looks like)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.int16)
    header.set_sform(affine_for(), code=1)
    header["vox_offset"] = 352
    return _write(path, header.binaryblock + b"\x00" * 4 + b"\x01" * 10)


def _degenerate(matrix) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    return affine


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _cut_file(path: Path, fraction: float) -> Path:
    return _write(path, _cut(path.read_bytes(), fraction))


def _nan_volume(value: float) -> np.ndarray:
    data = head_phantom().astype(np.float32)
    data[3, 4, 5] = value
    return data


BAD_IMAGES = {
    # name: (builder(tmp) -> path, expected fragment of the message, HTTP status)
    "text_file": (lambda t: _write(t / "notes.nii.gz", b"patient notes: scan tomorrow\n" * 20), "text file", 422),
    "png_renamed": (lambda t: _write(t / "scan.nii.gz", PNG_BYTES), "PNG image", 422),
    "png_renamed_nii": (lambda t: _write(t / "scan.nii", PNG_BYTES), "PNG image", 422),
    "random_bytes": (
        lambda t: _write(t / "random.nii.gz", np.random.default_rng(0).bytes(4096)),
        "not a gzip-compressed NIfTI",
        422,
    ),
    "empty_file": (lambda t: _write(t / "empty.nii.gz", b""), "empty file", 422),
    "gzip_named_nii": (
        lambda t: _write(t / "scan.nii", gzip.compress(nifti_bytes(head_phantom()))),
        "name it .nii.gz",
        422,
    ),
    "unsupported_suffix": (lambda t: _write(t / "scan.png", PNG_BYTES), "unsupported file type", 422),
    "truncated_gzip": (
        lambda t: _write(t / "cut.nii.gz", _cut(gzip.compress(nifti_bytes(head_phantom())), 0.6)),
        "truncated",
        422,
    ),
    "truncated_data": (  # a complete gzip stream whose NIfTI holds half the voxels its header declares
        lambda t: _write(t / "short.nii.gz", gzip.compress(_cut(nifti_bytes(head_phantom()), 0.5))),
        "is truncated: the header declares 6144 bytes of voxel data but the file holds only",
        422,
    ),
    "truncated_nii": (lambda t: _write(t / "cut.nii", _cut(nifti_bytes(head_phantom()), 0.7)), "truncated", 422),
    "four_d": (lambda t: write_nifti(t / "series.nii.gz", np.stack([head_phantom()] * 3, axis=-1)), "4D volume", 422),
    "two_d": (lambda t: write_nifti(t / "slice.nii.gz", head_phantom()[:, :, 5]), "2D image", 422),
    "single_slice": (lambda t: write_nifti(t / "slice.nii.gz", head_phantom()[:, :, 5:6]), "2D image", 422),
    "one_voxel": (lambda t: write_nifti(t / "voxel.nii.gz", np.ones((1, 1, 1), np.int16)), "single voxel", 422),
    "too_thin": (lambda t: write_nifti(t / "thin.nii.gz", head_phantom()[:, :, :2]), "too thin", 422),
    "huge_header": (lambda t: _huge_header(t / "huge.nii"), "1,000,000,000 voxels", 413),
    "all_zero": (lambda t: write_nifti(t / "zero.nii.gz", np.zeros(SHAPE, np.int16)), "every voxel is zero", 422),
    "constant": (lambda t: write_nifti(t / "const.nii.gz", np.full(SHAPE, 7, np.int16)), "constant image", 422),
    "nan_voxel": (lambda t: write_nifti(t / "nan.nii.gz", _nan_volume(np.nan)), "1 NaN", 422),
    "inf_voxel": (lambda t: write_nifti(t / "inf.nii.gz", _nan_volume(np.inf)), "1 infinite", 422),
    "zero_affine": (
        lambda t: write_nifti(t / "flat.nii.gz", head_phantom(), _degenerate(np.diag([1.0, 1.0, 0.0]))),
        "not invertible",
        422,
    ),
    "collinear_affine": (
        lambda t: write_nifti(t / "skew.nii.gz", head_phantom(), _degenerate([[1, 1, 0], [0, 0, 0], [0, 0, 1]])),
        "not invertible",
        422,
    ),
    "complex_voxels": (
        lambda t: write_nifti(t / "complex.nii.gz", head_phantom().astype(np.complex64)),
        "unsupported voxel type",
        422,
    ),
    "nrrd_text": (lambda t: _write(t / "scan.nrrd", b"just some text\n"), "not a NRRD image", 422),
    "nrrd_truncated": (
        lambda t: _cut_file(write_nrrd(t / "cut.nrrd", head_phantom(), encoding="raw"), 0.8),
        "truncated",
        422,
    ),
    "nrrd_detached": (
        lambda t: _write(
            t / "scan.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: scan.raw\n\n",
        ),
        "detached",
        422,
    ),
    "nrrd_multicomponent": (
        lambda t: _write(
            t / "seg.nrrd",
            b"NRRD0004\ntype: uchar\ndimension: 4\nsizes: 3 16 16 12\nkinds: list domain domain domain\n"
            b"space: left-posterior-superior\nspace directions: none (1,0,0) (0,1,0) (0,0,2)\n"
            b"space origin: (0,0,0)\nencoding: raw\n\n" + bytes(3 * 16 * 16 * 12),
        ),
        "3 components",
        422,
    ),
}

VALID_IMAGES = {
    "anisotropic_0.3x0.3x6mm": (
        lambda t: write_nifti(t / "aniso.nii.gz", head_phantom((64, 64, 8)), affine_for((0.3, 0.3, 6.0))),
        (0.3, 0.3, 6.0),
    ),
    "oblique": (
        lambda t: write_nifti(t / "oblique.nii.gz", head_phantom(), affine_for(SPACING, rotation(30, 20))),
        SPACING,
    ),
    "trailing_singleton_4th_dim": (lambda t: write_nifti(t / "t1.nii.gz", head_phantom()[..., None]), SPACING),
    "float32_nii": (lambda t: write_nifti(t / "float.nii", head_phantom(dtype=np.float32)), SPACING),
    "nrrd_lps": (lambda t: write_nrrd(t / "scan.nrrd", head_phantom()), SPACING),
    "nrrd_raw_big_endian": (
        lambda t: write_nrrd(t / "raw.nrrd", head_phantom().astype(">i2"), encoding="raw", endian="big"),
        SPACING,
    ),
    "nrrd_bzip2": (lambda t: write_nrrd(t / "bz.nrrd", head_phantom(), encoding="bzip2"), SPACING),
}


def make_bad_image(case: str, folder: Path) -> tuple[Path, str, int]:
    """The corpus file ``case`` written in ``folder``, its expected message fragment and HTTP status."""
    build, fragment, status = BAD_IMAGES[case]
    return build(folder), fragment, status


def label_for(image: np.ndarray) -> np.ndarray:
    return (image > 500).astype(np.uint8)


BAD_LABELS = {
    # name: (builder(tmp) -> label path, for an image written by write_nifti(head_phantom()), fragment)
    "shape_mismatch": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom())[:, :, :10]),
        "does not match the image shape",
    ),
    "affine_mismatch": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()), affine_for(origin=(-6.0, -8.0, -12.0))),
        "affine does not match",
    ),
    "value_outside": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()) * 2),
        "label values [2] outside the declared labels [0, 1]",
    ),
    "nan_label": (lambda t: write_nifti(t / "l.nii.gz", _nan_volume(np.nan)), "NaN"),
    "non_integer": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()).astype(np.float32) * 0.5),
        "non-integer values (e.g. 0.5)",
    ),
    "text_label": (lambda t: _write(t / "l.nii.gz", b"label\n" * 10), "text file"),
    "truncated_label": (
        lambda t: _write(t / "l.nii.gz", _cut(gzip.compress(nifti_bytes(label_for(head_phantom()))), 0.5)),
        "truncated",
    ),
    "four_d_label": (lambda t: write_nifti(t / "l.nii.gz", np.stack([label_for(head_phantom())] * 2, -1)), "4D volume"),
}


# ---------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_refused_with_a_message_naming_the_problem(case, tmp_path):
    path, fragment, status = make_bad_image(case, tmp_path)
    with pytest.raises(ValidationError) as info:
        validate_image_file(path)
    assert fragment in str(info.value), f"{case}: message {str(info.value)!r} does not name the problem"
    assert info.value.status_code == status
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", sorted(VALID_IMAGES))
def test_valid_image_passes(case, tmp_path):
    build, spacing = VALID_IMAGES[case]
    info = validate_image_file(build(tmp_path))
    assert len(info.shape) == 3 and min(info.shape) >= 4
    np.testing.assert_allclose(info.spacing, spacing, rtol=1e-5)
    assert info.minimum < info.maximum


def test_huge_header_is_refused_fast_without_allocating(tmp_path):
    path = _huge_header(tmp_path / "huge.nii")
    start = time.perf_counter()
    with pytest.raises(TooLargeError) as info:
        validate_image_file(path)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "1000x1000x1000" in message and "MEDSEGDIFF_MAX_VOXELS" in message


def test_voxel_and_upload_limits_come_from_the_environment(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "x.nii.gz", head_phantom())
    monkeypatch.setenv("MEDSEGDIFF_MAX_VOXELS", str(16 * 16 * 12 - 1))
    with pytest.raises(TooLargeError, match="limit of 3,071 voxels"):
        validate_image_file(path)
    monkeypatch.setenv("MEDSEGDIFF_MAX_VOXELS", "abc")
    with pytest.raises(ValueError, match="MEDSEGDIFF_MAX_VOXELS must be a positive integer"):
        validate_image_file(path)
    monkeypatch.delenv("MEDSEGDIFF_MAX_VOXELS")
    monkeypatch.setenv("MEDSEGDIFF_MAX_UPLOAD_MB", "1")
    big = _write(tmp_path / "big.nii", nifti_bytes(np.arange(300_000, dtype=np.float32).reshape(100, 100, 30)))
    with pytest.raises(TooLargeError, match="upload limit of 1.0 MiB"):
        validate_image_file(big)
    assert validate_image_file(path, max_bytes=10**6).shape == SHAPE


def test_nrrd_geometry_is_reported_in_ras(tmp_path):
    affine = affine_for(SPACING, rotation(10, 5), origin=(3.0, -4.0, 5.0))
    nii = validate_image_file(write_nifti(tmp_path / "a.nii.gz", head_phantom(), affine))
    nrd = validate_image_file(write_nrrd(tmp_path / "a.nrrd", head_phantom(), affine))
    np.testing.assert_allclose(nrd.affine, nii.affine, atol=1e-4)
    assert (nrd.minimum, nrd.maximum) == (nii.minimum, nii.maximum)


@pytest.mark.parametrize(
    "encoding, extra",
    [("raw", {}), ("raw", {"endian": "big"}), ("gzip", {}), ("bzip2", {}), ("ascii", {})],
    ids=["raw", "raw_big_endian", "gzip", "bzip2", "ascii"],
)
def test_nrrd_voxels_are_read_as_stored(encoding, extra, tmp_path):
    """Every NRRD encoding yields the voxels that were written (range and distinct label values)."""
    data = head_phantom().astype(">i2" if extra else np.int16)
    data[0, 0, 0], data[-1, -1, -1] = -7, 4321  # the first and the last voxel of the stream
    info = validate_image_file(write_nrrd(tmp_path / "v.nrrd", data, encoding=encoding, **extra))
    assert (info.minimum, info.maximum) == (-7, 4321)
    label = label_for(head_phantom()) * 3
    image = write_nifti(tmp_path / "image.nii.gz", head_phantom())
    label_file = write_nrrd(tmp_path / "l.nrrd", label, encoding=encoding)
    assert validate_label_file(label_file, image, {0, 3}).values == (0, 3)


def test_scaled_nifti_values_are_checked_after_scaling(tmp_path):
    image = write_nifti(tmp_path / "image.nii.gz", head_phantom())
    img = nib.Nifti1Image(label_for(head_phantom()).astype(np.int16), affine_for())
    img.header.set_slope_inter(2.0, 0.0)  # stored 0/1, meaning 0/2
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    with pytest.raises(ValidationError, match=r"label values \[2\] outside"):
        validate_label_file(tmp_path / "scaled.nii.gz", image, {0, 1})
    assert validate_label_file(tmp_path / "scaled.nii.gz", image, {0, 2}).values == (0, 2)


def test_a_large_volume_is_scanned_slab_by_slab(tmp_path):
    """A 128 MiB volume (sparse file) is checked to its last voxel with far less memory than the volume."""
    import tracemalloc

    shape = (512, 512, 128)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(affine_for(), code=1)
    header["vox_offset"] = 352
    path = tmp_path / "large.nii"
    with open(path, "wb") as f:
        f.write(header.binaryblock + b"\x00" * 4)
        f.seek(352 + 4 * (int(np.prod(shape)) - 1))  # zeros up to the last voxel, which is NaN
        f.write(np.array([np.nan], np.float32).tobytes())
    volume_bytes = 4 * int(np.prod(shape))
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError, match="has 1 NaN"):
            validate_image_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < volume_bytes / 4, f"peak {peak / 2**20:.0f} MiB for a {volume_bytes / 2**20:.0f} MiB volume"


# ---------------------------------------------------------------------------------------------- labels
@pytest.fixture
def image_path(tmp_path):
    return write_nifti(tmp_path / "image.nii.gz", head_phantom())


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_label_is_refused_with_a_message_naming_the_problem(case, tmp_path, image_path):
    build, fragment = BAD_LABELS[case]
    folder = tmp_path / "labels"
    folder.mkdir()
    with pytest.raises(ValidationError) as info:
        validate_label_file(build(folder), image_path, {0, 1})
    assert fragment in str(info.value), f"{case}: message {str(info.value)!r} does not name the problem"


@pytest.mark.parametrize(
    "data, allowed",
    [
        (label_for(head_phantom()), {0, 1}),
        (label_for(head_phantom()), {"brain": 1}),  # MONAI Label's labels dict: background 0 implied
        (np.zeros(SHAPE, np.uint8), {0, 1}),  # nothing to segment in this image is a valid answer
        (label_for(head_phantom()).astype(np.float32), {0, 1}),
        (np.random.default_rng(0).random(SHAPE).astype(np.float32), None),  # an uncertainty map
    ],
    ids=["uint8", "labels_dict", "all_zero", "float_integral", "uncertainty_map"],
)
def test_valid_label_passes(tmp_path, image_path, data, allowed):
    info = validate_label_file(write_nifti(tmp_path / "label.nii.gz", data), image_path, allowed)
    assert info.shape == SHAPE
    if allowed is not None:
        assert set(info.values) <= {0, 1}


def test_maps_may_hold_one_value_per_class(tmp_path, image_path):
    probs = write_nifti(tmp_path / "p.nii.gz", np.random.default_rng(2).random((*SHAPE, 3)).astype(np.float32))
    assert validate_label_file(probs, image_path, None, max_components=3).shape == SHAPE
    for components in (1, 2):
        with pytest.raises(ValidationError, match="4D volume"):
            validate_label_file(probs, image_path, None, max_components=components)


def test_label_geometry_is_compared_across_formats(tmp_path, image_path):
    label = write_nrrd(tmp_path / "label.nrrd", label_for(head_phantom()))
    assert validate_label_file(label, image_path, {0, 1}).values == (0, 1)


def test_label_affine_tolerance(tmp_path, image_path):
    nudged = affine_for(origin=(-8.0 + 0.001, -8.0, -12.0))  # float32 round-off sized
    label = write_nifti(tmp_path / "l.nii.gz", label_for(head_phantom()), nudged)
    assert validate_label_file(label, image_path, {0, 1}).values == (0, 1)


# ---------------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("../robex_head", "'..'"),
        ("..", "'..'"),
        ("a/../../etc/passwd", "'..'"),
        ("sub/dir", "path separator"),
        ("a\\b", "path separator"),
        ("/etc/passwd", "absolute path"),
        ("C:evil", "absolute path"),
        ("a\x00b", "NUL"),
        ("", "empty"),
        ("x" * 129, "129 characters"),
        (".hidden", "starts with"),
        ("name with space", "characters other than"),
        ("scan.nii.gz", "file ending"),
        (None, "empty"),
    ],
)
def test_bad_ids_are_refused(bad, fragment):
    with pytest.raises(InvalidIdError) as info:
        validate_id(bad)
    assert fragment in str(info.value)
    assert info.value.status_code == 400


@pytest.mark.parametrize("good", ["robex_head", "mni152_head", "1.2.840.113619.2.55", "case-01+v2", "A" * 128])
def test_good_ids_pass(good):
    assert validate_id(good) == good


def test_tags_follow_the_id_rules():
    assert validate_tag("final") == "final"
    for bad in ("../final", "final/x", ""):
        with pytest.raises(InvalidIdError):
            validate_tag(bad)


def test_infer_image_must_be_a_datastore_id_or_an_upload(tmp_path, monkeypatch):
    assert validate_infer_image("robex_head", ["robex_head"]) == "robex_head"
    with pytest.raises(NotFoundError, match="not in the datastore"):
        validate_infer_image("unknown", ["robex_head"])
    for path in ("/etc/passwd", str(tmp_path / "x.nii.gz"), "../robex_head"):
        with pytest.raises(InvalidIdError):
            validate_infer_image(path, ["robex_head"])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the endpoint saves uploaded files
    upload = write_nifti(tmp_path / "tmpabc.nii.gz", head_phantom())
    assert validate_infer_image(str(upload), []) == str(upload)
    _write(tmp_path / "tmpbad.nii.gz", b"text\n")
    with pytest.raises(ValidationError, match="uploaded image"):
        validate_infer_image(str(tmp_path / "tmpbad.nii.gz"), [])


# ---------------------------------------------------------------------------------------------- datastore
def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones included) except the lock file."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def store(tmp_path):
    """A datastore with ``img_a`` (final label) and ``img_b`` (unlabelled), as MONAI Label lays it out."""
    root = tmp_path / "datastore"
    (root / "labels" / "final").mkdir(parents=True)
    write_nifti(root / "img_a.nii.gz", head_phantom())
    write_nifti(root / "img_b.nii.gz", head_phantom()[::-1].copy())
    write_nifti(root / "labels" / "final" / "img_a.nii.gz", label_for(head_phantom()))
    return SafeLocalDatastore(str(root), label_values={"brain": 1})


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
@pytest.mark.parametrize("image_id", ["new_case", "img_a"])
def test_rejected_image_upload_leaves_the_datastore_identical(case, image_id, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    path, fragment, status = make_bad_image(case, tmp_path)
    with pytest.raises(HTTPException) as info:
        store.add_image(image_id, str(path), {})
    assert info.value.status_code == status
    assert fragment in info.value.detail
    assert snapshot(root) == before
    assert image_id not in store.list_images() or image_id == "img_a"


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_rejected_label_keeps_the_final_label(case, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    build, fragment = BAD_LABELS[case]
    folder = tmp_path / "upload"
    folder.mkdir()
    with pytest.raises(HTTPException) as info:
        store.save_label("img_a", str(build(folder)), "final", {})
    assert info.value.status_code == 422 and fragment in info.value.detail
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "call, status, fragment",
    [
        (lambda s, f: s.add_image("../evil", f, {}), 400, "'..'"),
        (lambda s, f: s.add_image("/tmp/evil", f, {}), 400, "absolute path"),
        (lambda s, f: s.save_label("img_b", f, "../../escape", {}), 400, "'..'"),
        (lambda s, f: s.save_label("no_such", f, "final", {}), 404, "'no_such' is not in the datastore"),
        (lambda s, f: s.remove_image("no_such"), 404, "not in the datastore"),
        (lambda s, f: s.remove_image("../img_a"), 400, "'..'"),
        (lambda s, f: s.remove_label("img_b", "final"), 404, "no label with tag 'final'"),
        (lambda s, f: s.update_image_info("no_such", {"x": 1}), 404, "not in the datastore"),
        (lambda s, f: s.update_label_info("img_b", "final", {"x": 1}), 404, "no label"),
        (lambda s, f: s.add_image("img_a", f, {}), 409, "already exists with labels"),
    ],
    ids=["traversal_id", "absolute_id", "traversal_tag", "unknown_image", "remove_unknown", "remove_traversal",
         "remove_unknown_label", "info_unknown", "label_info_unknown", "overwrite_labelled_image"],
)
def test_bad_requests_get_4xx_and_change_nothing(call, status, fragment, store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    valid = write_nifti(tmp_path / "valid.nii.gz", head_phantom() * 2)  # valid, and not img_a's voxels
    with pytest.raises(HTTPException) as info:
        call(store, str(valid))
    assert info.value.status_code == status and fragment in info.value.detail
    assert snapshot(root) == before
    assert not list(tmp_path.parent.glob("escape*")) and not (tmp_path / "evil.nii.gz").exists()


def test_reuploading_the_same_volume_writes_nothing(store, tmp_path):
    root = Path(store._datastore_path)
    before = snapshot(root)
    reexported = write_nifti(tmp_path / "again.nii", head_phantom())  # other bytes, same voxels and grid
    assert store.add_image("img_a", str(reexported), {}) == "img_a"
    assert snapshot(root) == before


def test_valid_writes_are_stored_without_temporary_files(store, tmp_path):
    root = Path(store._datastore_path)
    new_image = write_nifti(tmp_path / "c.nii.gz", head_phantom())
    assert store.add_image("img_c", str(new_image), {"user": "ann"}) == "img_c"
    new_label = write_nifti(tmp_path / "l.nii.gz", 1 - label_for(head_phantom()))
    assert store.save_label("img_a", str(new_label), "final", {}) == "img_a"
    uncertainty = write_nifti(tmp_path / "u.nii.gz", np.random.default_rng(1).random(SHAPE).astype(np.float32))
    store.save_label("img_a", str(uncertainty), "uncertainty", {})
    stored = nib.load(str(root / "labels" / "final" / "img_a.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), 1 - label_for(head_phantom()))
    assert store.get_image_info("img_c")["user"] == "ann"
    assert not [p for p in root.rglob(".*") if p.name != ".lock"], "temporary files left behind"
    reopened = SafeLocalDatastore(str(root))
    assert set(reopened.list_images()) == {"img_a", "img_b", "img_c"}
    assert set(reopened.get_labels_by_image_id("img_a")) == {"final", "uncertainty"}


def test_probability_maps_of_a_multi_class_model_are_stored(store, tmp_path):
    """A 'probability' map holds one channel per foreground class; a 'final' label of that shape is refused."""
    root = Path(store._datastore_path)
    tissue = SafeLocalDatastore(str(root), label_values={"csf": 1, "gm": 2, "wm": 3})
    probs = np.random.default_rng(3).random((*SHAPE, 3)).astype(np.float32)
    tissue.save_label("img_b", str(write_nifti(tmp_path / "p.nii.gz", probs)), "probability", {})
    stored = nib.load(str(root / "labels" / "probability" / "img_b.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), probs)
    before = snapshot(root)
    with pytest.raises(HTTPException, match="4D volume"):
        tissue.save_label("img_b", str(tmp_path / "p.nii.gz"), "final", {})
    assert snapshot(root) == before


def test_nrrd_uploads_are_stored_as_nifti(store, tmp_path):
    root = Path(store._datastore_path)
    affine = affine_for(SPACING, rotation(15, 0))
    store.add_image("from_slicer", str(write_nrrd(tmp_path / "s.nrrd", head_phantom(), affine)), {})
    stored = nib.load(str(root / "from_slicer.nii.gz"))
    np.testing.assert_allclose(stored.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), head_phantom())
    label = write_nrrd(tmp_path / "l.nrrd", label_for(head_phantom()), affine)
    store.save_label("from_slicer", str(label), "final", {})
    assert (root / "labels" / "final" / "from_slicer.nii.gz").is_file()
    assert not list(root.rglob("*.nrrd"))


def test_a_crash_while_writing_leaves_the_old_label(store, tmp_path, monkeypatch):
    root = Path(store._datastore_path)
    before = snapshot(root)
    new_label = write_nifti(tmp_path / "l.nii.gz", 1 - label_for(head_phantom()))

    def killed(*args):
        raise OSError("killed between write and rename")

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(OSError, match="killed"):
        store.save_label("img_a", str(new_label), "final", {})
    monkeypatch.undo()
    assert snapshot(root) == before  # old label, old datastore json, no half-written temporary file


def test_reopening_removes_only_stale_temporary_files(store):
    root = Path(store._datastore_path)
    stale = root / "labels" / "final" / ".img_a.nii.gz.0123456789ab.part"  # what a killed write leaves
    fresh = root / ".img_b.nii.gz.ba9876543210.part"  # a write that may still be going on elsewhere
    others = [root / ".keep", root / "notes.part", root / "labels" / "final" / ".img_a.nii.gz.part"]
    for path in [stale, fresh, *others]:
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in [stale, *others]:
        os.utime(path, (hours_ago, hours_ago))
    before = snapshot(root)

    reopened = SafeLocalDatastore(str(root))

    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in others)
    assert set(reopened.list_images()) == {"img_a", "img_b"}
    assert snapshot(root) == {k: v for k, v in before.items() if k != str(stale.relative_to(root))}


# ---------------------------------------------------------------------------------------------- HTTP pieces
def _upload_app(limit: int) -> FastAPI:
    app = FastAPI()

    @app.put("/datastore/image")
    async def upload(file: UploadFile):
        return {"size": len(await file.read())}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    client = TestClient(app)
    assert client.get("/info/").status_code == 200  # started: add_middleware would now raise
    assert install_asgi_middleware(app, UploadSizeLimitMiddleware, max_bytes=limit)
    assert not install_asgi_middleware(app, UploadSizeLimitMiddleware, max_bytes=limit)  # idempotent
    return app


def test_upload_size_limit_middleware():
    client = TestClient(_upload_app(limit=4096))
    assert client.put("/datastore/image", files={"file": ("a.nii.gz", b"x" * 1000)}).json() == {"size": 1000}
    response = client.put("/datastore/image", files={"file": ("a.nii.gz", b"x" * 10000)})
    assert response.status_code == 413 and "MEDSEGDIFF_MAX_UPLOAD_MB" in response.json()["detail"]

    body = (
        b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.nii.gz\"\r\n\r\n"
        + b"y" * 10000
        + b"\r\n--b0undary--\r\n"
    )

    def chunked():  # no Content-Length: the middleware counts the bytes as the app reads them
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = client.put(
        "/datastore/image", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 413
    assert client.get("/info/").status_code == 200


def test_inference_gate_counts_slots():
    gate = InferenceGate(max_concurrent=2, retry_after_s=7)
    with gate.slot(), gate.slot():
        assert gate.in_flight == 2
        with pytest.raises(ServerBusy) as info:
            with gate.slot():
                pass
        assert info.value.status_code == 503 and info.value.headers["Retry-After"] == "7"
        assert "2 of 2" in info.value.detail
    assert gate.in_flight == 0
    with pytest.raises(ValueError, match="max_concurrent"):
        InferenceGate(0)


def test_inference_gate_admits_exactly_its_slots_under_contention():
    gate, admitted, start = InferenceGate(3), [], threading.Barrier(12)

    def worker():
        start.wait()
        if gate.try_acquire():
            admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and gate.in_flight == 3


def test_gate_middleware_refuses_with_503_and_keeps_the_server_responsive():
    """Like MONAI Label's infer endpoint, ``/infer/slow`` blocks its event loop; the middleware runs it off the loop."""
    app = FastAPI()

    @app.post("/infer/slow")
    async def slow():
        time.sleep(1.0)  # synchronous work inside an async endpoint, as in monailabel.endpoints.infer
        return {"done": True}

    @app.post("/infer/fast")
    async def fast():
        return {"done": True}

    @app.get("/info/")
    async def info():
        return {"ok": True}

    app.add_middleware(InferenceGateMiddleware, gate=InferenceGate(1))
    results = {}
    with TestClient(app) as client:
        first = threading.Thread(target=lambda: results.update(first=client.post("/infer/slow")))
        first.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        busy = client.post("/infer/slow")
        info_response = client.get("/info/")
        elapsed = time.perf_counter() - t0
        first.join()
        after = client.post("/infer/slow")
        back_to_back = [client.post("/infer/fast").status_code for _ in range(30)]  # the slot is free on answer
    assert results["first"].json() == {"done": True}
    assert busy.status_code == 503 and "server busy" in busy.json()["detail"] and busy.headers["retry-after"]
    assert info_response.status_code == 200
    assert elapsed < 0.5, f"the server was blocked for {elapsed:.2f} s during an inference"
    assert after.status_code == 200
    assert back_to_back == [200] * 30


# ---------------------------------------------------------------------------------------------- train parameters
def test_train_parameters_default_and_refuse_unknown_schedules():
    from lib.params import TRAIN_PARAMS, InvalidParameter, parse

    assert parse({}, TRAIN_PARAMS)["lr_schedule"] == "cosine"
    assert parse({"lr_schedule": "constant"}, TRAIN_PARAMS)["lr_schedule"] == "constant"
    with pytest.raises(InvalidParameter, match="lr_schedule must be one of"):
        parse({"lr_schedule": "step"}, TRAIN_PARAMS)
