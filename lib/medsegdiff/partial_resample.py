"""Back onto the image grid after an interaction: only the image voxels that read a changed model voxel.

An interaction changes the model-grid result in a few slices (2D network) or windows (3D network), but
resampling it onto a 1 mm image grid costs as much as for a full run (0.5 s for a 181 x 217 x 181 head on 2 CPU
cores). Linear interpolation reads the 2 x 2 x 2 model voxels around a sample point, so an image voxel whose
sample point lies outside the changed model box widened by one voxel reads nothing that changed: it keeps the
previous image-grid value. :func:`image_box` finds the image-grid box holding every voxel that may read a change;
:func:`resample_into` resamples that box alone (``SpatialResample`` on a cropped destination grid) and pastes it
into the previous image-grid outputs. :func:`paint_model_voxels` sets a value on the image voxels inside scattered
model voxels (the uncertainty a click flags all over the head) without resampling anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from .windows import Box

__all__ = ["image_box", "resample_into", "paint_model_voxels"]


def image_box(
    model_box: Box, model_affine: np.ndarray, model_shape: Sequence[int], image_affine: np.ndarray, image_shape: Sequence[int]
) -> Box | None:
    """The image-grid box holding every voxel whose linear interpolation reads a voxel of ``model_box``.

    Returns None when the widened box reaches the model grid's border: the border padding of the resampling
    clamps sample points outside the grid onto border voxels, so any image voxel beyond it may read a change (the
    caller then resamples everything).
    """
    low = [s.start - 1 for s in model_box]
    high = [s.stop for s in model_box]  # the last changed voxel + 1
    if min(low) < 0 or any(h > n - 1 for h, n in zip(high, model_shape)):
        return None
    to_image = np.linalg.inv(np.asarray(image_affine, np.float64)) @ np.asarray(model_affine, np.float64)
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*zip(low, high))]).T
    points = (to_image @ corners)[:3]
    start = np.maximum(np.floor(points.min(axis=1)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(points.max(axis=1)).astype(int) + 2, np.asarray(image_shape))
    if np.any(stop <= start):
        return tuple(slice(0, 0) for _ in image_shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def resample_into(
    previous: torch.Tensor, source: MetaTensor, image_affine: torch.Tensor, box: Box, mode: str = "bilinear"
) -> torch.Tensor:
    """``previous`` (ch, *image grid) with ``box`` replaced by ``source`` (ch, *model grid, its affine) resampled
    there, as :class:`~medsegdiff.transforms.ToOriginalGridd` resamples it (border padding, float64 grid)."""
    out = previous.clone()
    size = [s.stop - s.start for s in box]
    if min(size) <= 0:
        return out
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = torch.tensor([float(s.start) for s in box], dtype=torch.float64)
    crop_affine = torch.as_tensor(image_affine, dtype=torch.float64) @ shift
    resample = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float64)
    part = resample(source, dst_affine=crop_affine, spatial_size=size)
    out[(slice(None), *box)] = part.as_tensor().to(out.dtype)
    return out


def paint_model_voxels(
    target: torch.Tensor, mask: np.ndarray, model_affine: np.ndarray, image_affine: np.ndarray, value: float
) -> torch.Tensor:
    """``target`` (ch, *image grid) with ``value`` on every image voxel whose nearest model voxel (the one
    nearest-neighbour resampling reads) is in ``mask`` (*model grid, bool). In place; also returned.

    Axis-aligned grids (any flips, permutations and spacings) gather the mask with one index array per axis;
    oblique ones map the image voxels' centres slab by slab.
    """
    if not mask.any():
        return target
    to_model = np.linalg.inv(np.asarray(model_affine, np.float64)) @ np.asarray(image_affine, np.float64)
    shape = tuple(target.shape[1:])
    padded = np.pad(mask, [(0, 1)] * mask.ndim)  # index n along an axis: outside the model grid, never painted

    def nearest(coordinates: np.ndarray, axis: int) -> np.ndarray:
        index = np.floor(coordinates + 0.5).astype(np.int64)
        index[(index < 0) | (index >= mask.shape[axis])] = mask.shape[axis]
        return index

    rotation = to_model[:3, :3]
    if np.count_nonzero(np.abs(rotation) > 1e-9) == 3:  # each model axis along one image axis
        source = [int(np.flatnonzero(np.abs(row) > 1e-9)[0]) for row in rotation]  # model axis j ← image axis
        index = [nearest(rotation[j, a] * np.arange(shape[a]) + to_model[j, 3], j) for j, a in enumerate(source)]
        painted = padded[np.ix_(*index)].transpose(np.argsort(source))
        target[:, torch.from_numpy(np.ascontiguousarray(painted))] = value
        return target
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape[1:]], indexing="ij"), axis=-1).astype(np.float64)
    slab = grid @ rotation[:, 1:].T + to_model[:3, 3]  # model coordinates of image slab 0
    for i in range(shape[0]):  # one image slab at a time: bounded memory on a 1 mm head
        points = slab + i * rotation[:, 0]
        painted = padded[tuple(nearest(points[..., j], j) for j in range(3))]
        target[:, i][:, torch.from_numpy(painted)] = value
    return target
