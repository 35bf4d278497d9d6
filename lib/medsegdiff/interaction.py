"""Annotator marks (clicks, scribbles) as known voxels that the diffusion sampler keeps (RePaint-style).

A :class:`KnownRegion` holds, on the model's grid, which voxels the annotator marked and with which class
(0 = background, 1..C = a foreground class). :class:`~medsegdiff.sampling.EnsembleSampler` replaces the marked
voxels of every x_t by the forward-noised known mask q(x_t | x0) and gives them the marked class in the result;
the network sees the marks in x_t at every step, so the unmarked voxels around them adapt. This needs no
training of its own: it works with any trained MedSegDiff network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .diffusion import labels_to_diffusion_target

__all__ = ["KnownRegion", "click_balls", "marks_to_labels", "slices_holding", "UNKNOWN"]

UNKNOWN = -1
"""Value of an unmarked voxel in a marks label map."""


@dataclass
class KnownRegion:
    """Marked voxels of a batch on the model's grid.

    Attributes:
        labels: (B, 1, *spatial) integer map: the marked class (0 = background, 1..C) or :data:`UNKNOWN`.
    """

    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.ndim < 3 or self.labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, 1, *spatial), got shape {tuple(self.labels.shape)}")

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, *spatial) bool: the marked voxels."""
        return self.labels != UNKNOWN

    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    def select(self, index: Sequence[int] | slice) -> KnownRegion:
        """The region of some images of the batch."""
        return KnownRegion(self.labels[index])

    def target(self, num_classes: int, background: bool) -> torch.Tensor:
        """x0 of the marked voxels in diffusion space (B, channels, *spatial); NaN on unmarked voxels."""
        x0 = labels_to_diffusion_target(self.labels.clamp_min(0), num_classes, background)
        return x0.masked_fill(~self.mask, float("nan"))

    def probabilities(self, num_classes: int) -> torch.Tensor:
        """One-hot foreground probabilities of the marked class (B, C, *spatial); NaN on unmarked voxels."""
        return (self.target(num_classes, False) + 1.0) / 2.0


def click_balls(shape: Sequence[int], points: Sequence[Sequence[int]], radius: int) -> torch.Tensor:
    """Bool mask of balls (discs on a 2D grid) of ``radius`` voxels around ``points`` (full indices into ``shape``).

    A click on a volume is a ball for a 2D network too: it marks the slices it crosses, each with the ball's
    cross-section.

    Args:
        shape: the spatial shape of the grid (2D or 3D).
        points: voxel indices, one coordinate per axis of ``shape``.
        radius: ball radius in voxels (0: the voxel alone).
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    for point in points:
        if len(point) != len(shape) or any(not 0 <= int(p) < s for p, s in zip(point, shape)):
            raise ValueError(f"point {list(point)} lies outside a grid of shape {list(shape)}")
        distance = sum((grid - int(p)).float() ** 2 for grid, p in zip(grids, point))
        mask |= distance <= radius**2
    return mask


def slices_holding(mask: torch.Tensor, slice_axis: int) -> list[int]:
    """The indices along ``slice_axis`` of the slices of a bool mask (*spatial) that hold a True voxel (the
    slices a 2D network re-samples for a ball, or for the marks that changed)."""
    return torch.nonzero(mask.movedim(slice_axis, 0).flatten(1).any(dim=1)).flatten().tolist()


def marks_to_labels(
    shape: Sequence[int],
    foreground: Sequence[Sequence[int]] = (),
    background: Sequence[Sequence[int]] = (),
    radius: int = 1,
    scribble_foreground: torch.Tensor | None = None,
    scribble_background: torch.Tensor | None = None,
    foreground_class: int = 1,
) -> torch.Tensor:
    """One image's marks → a (1, *shape) label map for :class:`KnownRegion`.

    Clicks become balls (:func:`click_balls`); scribbles (bool masks of ``shape``) mark exactly their voxels.
    Where foreground and background marks overlap, the later kind wins in the order: foreground balls,
    background balls, foreground scribbles, background scribbles (a scribble is more precise than a ball).
    """
    labels = torch.full((1, *shape), UNKNOWN, dtype=torch.long)
    layers = [
        (click_balls(shape, foreground, radius) if foreground else None, foreground_class),
        (click_balls(shape, background, radius) if background else None, 0),
        (scribble_foreground, foreground_class),
        (scribble_background, 0),
    ]
    for mask, value in layers:
        if mask is not None:
            if tuple(mask.shape) != tuple(shape):
                raise ValueError(f"scribble mask of shape {list(mask.shape)} for a grid of shape {list(shape)}")
            labels[0][mask.bool()] = value
    return labels
