"""Intensity normalisation, resampling to the model grid and 2D training slices of a labelled head."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .scan import Scan

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
    context_slices: int = 0,
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
        context_slices: k neighbour slices per side stacked with each slice (2.5D networks; edges repeat).

    Returns:
        images ``(N, H, W)`` float32 in [0, 1] (``(N, 2k + 1, H, W)`` with context slices, the slice itself in
        the middle) and labels ``(N, H, W)`` uint8.

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
    if context_slices < 0:
        raise ValueError(f"context_slices must be >= 0, got {context_slices}")

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
    if context_slices:
        last = len(images) - 1
        neighbours = [[min(max(i + o, 0), last) for o in range(-context_slices, context_slices + 1)] for i in range(len(images))]
        images = images[np.asarray(neighbours)]
    return images[keep], labels[keep]


