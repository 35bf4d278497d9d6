"""Upload validation without a server (fast): each file of the bad-input corpus (``bad_volumes``) is refused
with a message that names the problem; valid images, labels, ids and tags pass."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP_DIR))
from lib.validation import (  # noqa: E402
    InvalidIdError, NotFoundError, TooLargeError, ValidationError, validate_id, validate_image_file,
    validate_infer_image, validate_label_file, validate_tag,
)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_volumes import (  # noqa: E402
    BAD_IMAGES, BAD_LABELS, SHAPE, SPACING, VALID_IMAGES, affine_for, head_phantom, huge_header, label_for,
    make_bad_image, nifti_bytes, rotation, write_bytes, write_nifti, write_nrrd,
)


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
    path = huge_header(tmp_path / "huge.nii")
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
    big = write_bytes(tmp_path / "big.nii", nifti_bytes(np.arange(300_000, dtype=np.float32).reshape(100, 100, 30)))
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
    write_bytes(tmp_path / "tmpbad.nii.gz", b"text\n")
    with pytest.raises(ValidationError, match="uploaded image"):
        validate_infer_image(str(tmp_path / "tmpbad.nii.gz"), [])
