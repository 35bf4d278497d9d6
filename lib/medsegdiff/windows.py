"""Re-sampling a few sliding windows of a 3D network: the windows around a region, blended as in a full run.

A 3D network runs on the sliding windows of MONAI's ``SlidingWindowInferer`` (Gaussian blending), each window's
start position seeding its noise. To re-sample only a region of an earlier result, the same inferer runs over the
same window grid, but the predictor samples only the windows that overlap the region's box and returns zeros
(no network call) for the others. A voxel covered by re-sampled windows only then gets the same weighted terms,
added in the same order and divided by the same weight sum as in a full run: it is bit-identical to the full run
(with the same marks, seed and sampler). :class:`WindowPlan` finds those voxels (the box is among them, since
every window covering a box voxel overlaps the box); the rest of the earlier result is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch

__all__ = ["Box", "region_box", "padding", "WindowPlan", "Resampled"]

Box = tuple[slice, slice, slice]
"""A box of voxels: one ``slice(start, stop)`` per spatial axis."""


def region_box(region: torch.Tensor | Sequence[Any], spatial_shape: Sequence[int]) -> Box | None:
    """The box to re-sample, from a changed-voxel mask or a box.

    Args:
        region: a bool mask of ``spatial_shape`` (or (B, 1, *spatial_shape): the union over the batch), whose
            bounding box is taken; or one ``slice(start, stop)`` or ``(start, stop)`` per spatial axis.
        spatial_shape: the volume's spatial shape.

    Returns:
        The box, or ``None`` for an empty mask (nothing to re-sample).

    Raises:
        ValueError: a mask of another shape, a box that is not one (start, stop) per axis, an empty box or one
            that reaches outside the volume.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if isinstance(region, torch.Tensor):
        mask = region.bool()
        if mask.ndim == len(shape) + 2 and mask.shape[1] == 1:
            mask = mask.any(dim=0)[0]
        if tuple(mask.shape) != shape:
            raise ValueError(f"region mask of shape {list(region.shape)} for a volume of shape {list(shape)}")
        if not bool(mask.any()):
            return None
        voxels = mask.nonzero()
        return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(voxels.min(0).values, voxels.max(0).values))
    if len(region) != len(shape):
        raise ValueError(f"region box needs one (start, stop) per axis of {list(shape)}, got {region!r}")
    box = []
    for axis, (bounds, size) in enumerate(zip(region, shape)):
        start, stop = (bounds.start, bounds.stop) if isinstance(bounds, slice) else bounds
        if not (isinstance(start, Integral) and isinstance(stop, Integral) and 0 <= start < stop <= size):
            raise ValueError(
                f"region box {region!r}: axis {axis} ({start}, {stop}) is empty or outside the volume of shape "
                f"{list(shape)} (needs integers 0 <= start < stop <= {size})"
            )
        box.append(slice(int(start), int(stop)))
    return tuple(box)


def padding(spatial_shape: Sequence[int], roi: Sequence[int]) -> list[int]:
    """Voxels ``SlidingWindowInferer`` pads before each axis of a volume smaller than the window."""
    return [max(r - s, 0) // 2 for s, r in zip(spatial_shape, roi)]


@dataclass
class WindowPlan:
    """Which windows of one volume a partial run re-samples, and the voxels that come out exact.

    Args:
        box: the box to re-sample on the volume's grid; ``None``: every window (a full run); ``()``: none.
        spatial_shape: the volume's spatial shape.
        roi: the window size.

    The predictor asks :meth:`wants` for every window location (in the padded coordinates the inferer uses).
    """

    box: Box | None
    spatial_shape: tuple[int, ...]
    roi: tuple[int, ...]
    resampled: int = 0
    skipped: list[tuple[slice, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        pad = padding(self.spatial_shape, self.roi)
        self._pad = pad
        self._padded_box = None if self.box is None else [slice(b.start + p, b.stop + p) for b, p in zip(self.box, pad)]

    def wants(self, location: Sequence[slice]) -> bool:
        """Whether the window at ``location`` (its spatial slices) is re-sampled; counts it."""
        box = self._padded_box
        wanted = box is None or (bool(box) and all(w.start < b.stop and b.start < w.stop for w, b in zip(location, box)))
        if wanted:
            self.resampled += 1
        else:
            self.skipped.append(tuple(location))
        return wanted

    def exact(self) -> torch.Tensor:
        """Bool mask of ``spatial_shape``: the voxels no skipped window covers (bit-identical to a full run)."""
        mask = torch.ones([max(s, r) for s, r in zip(self.spatial_shape, self.roi)], dtype=torch.bool)
        for location in self.skipped:
            mask[location] = False
        return mask[tuple(slice(p, p + s) for p, s in zip(self._pad, self.spatial_shape))]

    @property
    def windows(self) -> int:
        """Windows of the volume seen so far (re-sampled and skipped)."""
        return self.resampled + len(self.skipped)


@dataclass
class Resampled:
    """What a 3D network's run re-sampled (the inferer's ``resampled`` after a call).

    Attributes:
        box: the box asked for; ``None``: the whole volume (a full run); ``()``: nothing changed, nothing sampled.
        windows: windows sampled (over the batch).
        total_windows: windows of a full run (over the batch).
        mask: (B, 1, *spatial) bool: the voxels that come from this run; the others are the previous result's.
    """

    box: Box | None
    windows: int
    total_windows: int
    mask: torch.Tensor

    def describe(self) -> dict[str, Any]:
        """For a result JSON: the box (``"all"`` or [[start, stop]] per axis), window counts, voxel fraction."""
        return {
            "resampled_box": "all" if self.box is None else [[b.start, b.stop] for b in self.box],
            "resampled_windows": self.windows,
            "windows": self.total_windows,
            "resampled_fraction": float(self.mask.float().mean()) if self.mask.numel() else 0.0,
        }
