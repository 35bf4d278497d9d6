"""Real labelled scans on the model grid (the recipe of ``brain_slices_2d``) and back to the native grid.

Every scan comes from a registry package (``medsegdiff.sample_data``); nothing is synthetic. Volumes are put on
the sample model's grid exactly as ``brain_slices_2d`` does for training (normalise on the native grid,
resample to 3 mm, axial slices centre-padded to 80x80) and results go back to the native grid for the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from medsegdiff.sample_data import Scan, normalize_intensity, normalized_on_grid

from .settings import SLICE_SIZE, SPACING_MM

__all__ = ["GridVolume", "to_model_grid", "AXIAL", "view_stack", "unview_stack", "head_mask"]

AXIAL = 2
"""The model grid's slice axis (the sample model's); 0 = sagittal, 1 = coronal slices of the same volume."""


def view_stack(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """A (..., X, Y, Z) model-grid array as slices along ``axis`` (0, 1 or 2): (..., size, size, n), the slice
    axis last and the two in-plane axes centre-padded / cropped to ``size`` (axial slices are already fitted)."""
    moved = np.moveaxis(array, array.ndim - 3 + axis, -1)
    out = np.zeros((*moved.shape[:-3], size, size, moved.shape[-1]), dtype=moved.dtype)
    (sa, ta), (sb, tb) = (_fit_window(n, size) for n in moved.shape[-3:-1])
    out[..., ta, tb, :] = moved[..., sa, sb, :]
    return out


def unview_stack(stacked: np.ndarray, axis: int, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`view_stack` onto a model-grid ``shape`` (X, Y, Z): in-plane fit undone (zeros where
    the view cropped), the slice axis put back."""
    moved_shape = list(np.moveaxis(np.empty(tuple(shape), dtype=bool), axis, -1).shape)
    out = np.zeros((*stacked.shape[:-3], *moved_shape), dtype=stacked.dtype)
    (sa, ta), (sb, tb) = (_fit_window(n, stacked.shape[-3]) for n in moved_shape[:2])
    out[..., sa, sb, :] = stacked[..., ta, tb, :]
    return np.moveaxis(out, -1, out.ndim - 3 + axis)


def _fit_window(n: int, size: int) -> tuple[slice, slice]:
    """Source and target slices that centre-crop / zero-pad ``n`` to ``size`` like MONAI ``ResizeWithPadOrCrop``."""
    if n <= size:
        before = (size - n) // 2
        return slice(0, n), slice(before, before + n)
    start = n // 2 - size // 2
    return slice(start, start + size), slice(0, size)


@dataclass
class GridVolume:
    """A labelled real scan on the model grid: normalised, at ``spacing`` mm, axial slices fitted to ``size``.

    Attributes:
        name: scan name.
        image: (H, W, Z) normalised intensities on the model grid (in-plane padded / cropped to ``size``).
        label: (H, W, Z) integer labels on the same grid (nearest-neighbour resampling).
        native_label: the reference label on the scan's own grid (what the metrics use).
        native_spacing: voxel size of the native grid in mm.
        grid_shape: shape after resampling, before the in-plane fit.
        num_classes: foreground classes.
        native_head: the head on the native grid (intensity above 10 % of its range, holes filled): the region
            "over the head" of the uncertainty metrics, which leaves out the air around it.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    native_label: np.ndarray
    native_spacing: tuple[float, ...]
    grid_shape: tuple[int, int, int]
    num_classes: int
    native_head: np.ndarray | None = None

    def slab(self, start: int, stop: int) -> GridVolume:
        """Axial model-grid slices ``start:stop`` with the native slices whose position falls inside them (for
        quick runs; the native range is rounded to whole slices)."""
        gz, nz = self.grid_shape[2], self.native_label.shape[2]
        position = np.arange(nz) * (gz - 1) / max(nz - 1, 1)
        native = np.flatnonzero((position >= start - 0.5) & (position < stop - 0.5))
        na, nb = int(native[0]), int(native[-1]) + 1
        return replace(
            self, image=self.image[:, :, start:stop], label=self.label[:, :, start:stop],
            native_label=self.native_label[:, :, na:nb],
            native_head=None if self.native_head is None else self.native_head[:, :, na:nb],
            grid_shape=(*self.grid_shape[:2], stop - start),
        )

    def central_slab(self, size: int) -> GridVolume:
        """The ``size`` axial slices centred on the slice with the most foreground (quick runs)."""
        centre = int(np.argmax((self.label > 0).mean(axis=(0, 1))))
        start = min(max(centre - size // 2, 0), max(self.image.shape[2] - size, 0))
        return self.slab(start, min(start + size, self.image.shape[2]))

    def slices(self, z: Sequence[int] | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Axial slices as (N, 1, H, W) images and labels (the layout of ``train_on_arrays``)."""
        images, labels = self.view_slices(AXIAL)
        return (images, labels) if z is None else (np.ascontiguousarray(images[z]), np.ascontiguousarray(labels[z]))

    def view_slices(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Slices along ``axis`` (0 sagittal, 1 coronal, 2 axial) as (N, 1, S, S) images and labels, S the
        axial slice size (the through-plane extent is centre-padded to it; axial slices are already fitted)."""
        size = self.image.shape[0]
        image, label = (self.image, self.label) if axis == AXIAL else (view_stack(a, axis, size) for a in (self.image, self.label))
        images, labels = np.moveaxis(image, 2, 0)[:, None], np.moveaxis(label, 2, 0)[:, None]
        return np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.uint8)

    def to_native(self, maps: np.ndarray, fill: Sequence[float] | float = 0.0, order: int = 1) -> np.ndarray:
        """Model-grid maps (K, H, W, Z) → the native grid (K, X, Y, Z_native), linear interpolation.

        The in-plane fit is undone first (voxels cropped away get ``fill`` per channel), then the resampling
        (the inverse of ``scipy.ndimage.zoom``'s corner-aligned grid that put the scan on the model grid).
        """
        maps = np.asarray(maps, dtype=np.float32)
        k = maps.shape[0]
        fills = np.broadcast_to(np.asarray(fill, dtype=np.float32), (k,))
        grid = np.empty((k, *self.grid_shape), dtype=np.float32)
        grid[:] = fills[:, None, None, None]
        (sx, tx), (sy, ty) = (_fit_window(n, s) for n, s in zip(self.grid_shape[:2], self.image.shape[:2]))
        grid[:, sx, sy, :] = maps[:, tx, ty, :]
        native_shape = self.native_label.shape
        factors = [n / g for n, g in zip(native_shape, self.grid_shape)]
        out = np.stack([ndi.zoom(channel, factors, order=order) for channel in grid])
        if out.shape[1:] != native_shape:  # rounding guard; zoom gives round(g * n / g) = n
            raise RuntimeError(f"resampled shape {out.shape[1:]} differs from the native {native_shape}")
        return out

    def labels_to_native(self, distribution: np.ndarray) -> np.ndarray:
        """Class distribution (C+1, H, W, Z) on the model grid → integer labels on the native grid."""
        background = [1.0] + [0.0] * (distribution.shape[0] - 1)
        return self.to_native(distribution, fill=background).argmax(axis=0).astype(np.uint8)


def to_model_grid(scan: Scan, spacing: float = SPACING_MM, size: Sequence[int] = SLICE_SIZE) -> GridVolume:
    """Put a labelled 3D scan on the model grid with the recipe of ``brain_slices_2d`` (axial slices)."""
    if scan.label is None or scan.image.ndim != 3:
        raise ValueError(f"{scan.name}: a labelled 3D scan is needed")
    image, label = normalized_on_grid(scan, spacing)
    grid_shape = tuple(int(s) for s in image.shape)
    fitted_image = np.zeros((size[0], size[1], grid_shape[2]), dtype=np.float32)
    fitted_label = np.zeros((size[0], size[1], grid_shape[2]), dtype=np.uint8)
    (sx, tx), (sy, ty) = (_fit_window(n, s) for n, s in zip(grid_shape[:2], size))
    fitted_image[tx, ty] = image[sx, sy]
    fitted_label[tx, ty] = label[sx, sy]
    return GridVolume(
        name=scan.name,
        image=fitted_image,
        label=fitted_label,
        native_label=np.asarray(scan.label, dtype=np.uint8),
        native_spacing=tuple(scan.spacing),
        grid_shape=grid_shape,  # type: ignore[arg-type]
        num_classes=max(len(scan.label_names), 1),
        native_head=head_mask(scan.image),
    )


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head: intensity above 10 % of the normalised range, holes filled in 3D and per axial slice (no air)."""
    head = ndi.binary_fill_holes(normalize_intensity(image) > 0.1)
    for z in range(head.shape[2]):
        head[:, :, z] = ndi.binary_fill_holes(head[:, :, z])
    return head

