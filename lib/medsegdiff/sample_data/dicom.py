"""A real abdominal MR DICOM slice from pydicom-data with its overlay-drawn lesion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .scan import Scan, _package_dir, _require_files

_DICOM_LESION = "MR-SIEMENS-DICOM-WithOverlays.dcm"
_DICOM_HINT = "install it with `pip install pydicom-data==1.0.0` (and pydicom)"


def _dicom_lesion_files() -> list[Path]:
    data = _package_dir("data_store", _DICOM_HINT) / "data"
    if importlib.util.find_spec("pydicom") is None:
        raise FileNotFoundError(f"Python package 'pydicom' is not installed: {_DICOM_HINT}")
    return _require_files([data / _DICOM_LESION], _DICOM_HINT)


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


