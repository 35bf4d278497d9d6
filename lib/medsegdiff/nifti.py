"""NIfTI images with their geometry written the way every reader (nibabel, ITK, 3D Slicer) takes it."""

from __future__ import annotations

import nibabel as nib
import numpy as np

__all__ = ["nifti_image"]


def nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """``data`` on the voxel-to-RAS ``affine``: stored in ``data``'s dtype, qform and sform both set to the affine
    (code 1, scanner), units mm."""
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img
