"""Annotator marks (clicks, scribbles) as known voxels that the diffusion sampler keeps (RePaint-style).

A :class:`KnownRegion` holds, on the model's grid, which voxels the annotator marked and with which class
(0 = background, 1..C = a foreground class). :class:`~medsegdiff.sampling.EnsembleSampler` replaces the marked
voxels of every x_t by the forward-noised known mask q(x_t | x0) and gives them the marked class in the result;
the network sees the marks in x_t at every step, so the unmarked voxels around them adapt. This needs no
training of its own: it works with any trained MedSegDiff network.

A 2D network with guidance channels (:mod:`medsegdiff.guidance`) can also read a click beyond the slices its
ball crosses: :func:`click_reach_hints` puts the click's disc on the next ``reach`` slices each side as a *hint*,
a guidance-only mark the network reads but the sampler does not force, so that a click can correct an error that
spans more slices than its ball.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .diffusion import labels_to_diffusion_target
from .fusion import probabilities_to_labels
from .windows import region_box

__all__ = [
    "KnownRegion", "click_balls", "click_reach_hints", "keep_changes_near_marks", "marks_to_labels", "slices_holding",
    "UNKNOWN",
]

UNKNOWN = -1
"""Value of an unmarked voxel in a marks label map."""


@dataclass
class KnownRegion:
    """Marked voxels of a batch on the model's grid.

    Attributes:
        labels: (B, 1, *spatial) integer map: the marked class (0 = background, 1..C) or :data:`UNKNOWN`.
        hints: ``None`` or a map like ``labels`` of guidance-only marks (:func:`click_reach_hints`): a guided
            network reads them where ``labels`` is unmarked; the sampler neither keeps nor forces them.
    """

    labels: torch.Tensor
    hints: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim < 3 or self.labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, 1, *spatial), got shape {tuple(self.labels.shape)}")
        if self.hints is not None and self.hints.shape != self.labels.shape:
            raise ValueError(f"hints of shape {tuple(self.hints.shape)} for marks of shape {tuple(self.labels.shape)}")

    @property
    def mask(self) -> torch.Tensor:
        """(B, 1, *spatial) bool: the marked voxels."""
        return self.labels != UNKNOWN

    def is_empty(self) -> bool:
        """No marks and no hints."""
        return not bool(self.mask.any()) and (self.hints is None or not bool((self.hints != UNKNOWN).any()))

    def apply(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> KnownRegion:
        """The region with ``transform`` applied to its marks and hints alike (a crop, a padding, a stack)."""
        return KnownRegion(transform(self.labels), None if self.hints is None else transform(self.hints))

    def select(self, index: Sequence[int] | slice) -> KnownRegion:
        """The region of some images of the batch."""
        return self.apply(lambda t: t[index])

    def guidance(self) -> torch.Tensor:
        """(B, 1, *spatial) what a guided network reads: the marks, and the hints where unmarked."""
        return self.labels if self.hints is None else torch.where(self.mask, self.labels, self.hints)

    def target(self, num_classes: int, background: bool, scale: float = 1.0) -> torch.Tensor:
        """x0 of the marked voxels in diffusion space (B, channels, *spatial; ``scale``: the diffusion's
        ``mask_scale``); NaN on unmarked voxels."""
        x0 = labels_to_diffusion_target(self.labels.clamp_min(0), num_classes, background, scale)
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
    for point in points:
        if len(point) != len(shape) or any(not 0 <= int(p) < s for p, s in zip(point, shape)):
            raise ValueError(f"point {list(point)} lies outside a grid of shape {list(shape)}")
        box = tuple(slice(max(int(p) - radius, 0), min(int(p) + radius + 1, s)) for p, s in zip(point, shape))
        grids = torch.meshgrid(*[torch.arange(b.start, b.stop) for b in box], indexing="ij")  # the ball's box only
        mask[box] |= sum((grid - int(p)) ** 2 for grid, p in zip(grids, point)) <= radius**2
    return mask


def click_reach_hints(
    shape: Sequence[int],
    clicks: Sequence[tuple[Sequence[int], int]],
    radius: int,
    reach: int,
    slice_axis: int,
    label: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hints (1, *shape) that carry clicks beyond their balls along a 2D network's slice axis.

    A click's ball of ``radius`` marks the ``2 * radius + 1`` slices it crosses; up to ``reach`` slices after them
    on each side get the click's disc (radius ``max(radius - 1, 1)``, centred on the click) with the click's class
    as a hint. A guided network trained on discs reads it as a click on that slice, so an error that runs on
    through those slices can be corrected there too; the sampler does not force a hint (:class:`KnownRegion`).
    With ``label`` (the label the clicks correct), the hints of a click go on outwards only while that label
    disagrees with the click at the click's in-plane position: along the error the click is on, not past its end.
    Later clicks overwrite earlier ones where their hints overlap.

    Args:
        shape: the 3D model grid.
        clicks: (voxel, class) pairs, full indices into ``shape``.
        radius: the clicks' ball radius in voxels.
        reach: at most this many slices each side beyond the ball (0: no hints).
        slice_axis: the axis the 2D network slides over.
        label: ``None`` or the label (*shape) the clicks correct.
    """
    if len(shape) != 3 or slice_axis not in (0, 1, 2):
        raise ValueError(f"hints need a 3D grid and a slice axis 0-2, got shape {list(shape)} and axis {slice_axis}")
    if reach < 0 or radius < 0:
        raise ValueError(f"reach and radius must be >= 0, got {reach} and {radius}")
    if label is not None and tuple(label.shape) != tuple(shape):
        raise ValueError(f"label of shape {list(label.shape)} for a grid of shape {list(shape)}")
    hints = torch.full((1, *shape), UNKNOWN, dtype=torch.long)
    plane = [s for a, s in enumerate(shape) if a != slice_axis]
    for point, value in clicks:
        point = [int(p) for p in point]
        disc = click_balls(plane, [[p for a, p in enumerate(point) if a != slice_axis]], max(radius - 1, 1))
        for step in (-1, 1):
            for distance in range(radius + 1, radius + reach + 1):
                along = point[slice_axis] + step * distance
                if not 0 <= along < shape[slice_axis]:
                    break
                if label is not None and int(label[(*point[:slice_axis], along, *point[slice_axis + 1:])]) == value:
                    break  # the error the click is on ends here
                hints[0].select(slice_axis, along)[disc] = int(value)
    return hints


def slices_holding(mask: torch.Tensor, slice_axis: int) -> list[int]:
    """The indices along ``slice_axis`` of the slices of a bool mask (*spatial) that hold a True voxel (the
    slices a 2D network re-samples for a ball, or for the marks that changed)."""
    return torch.nonzero(mask.movedim(slice_axis, 0).flatten(1).any(dim=1)).flatten().tolist()


def keep_changes_near_marks(
    outputs: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], marks: torch.Tensor, changed: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A re-sampled result whose label changes only as the new marks ask and where they reach: else the previous.

    Re-sampling a slice for a click changes its chains everywhere in the slice (a 2D network sees all of it), so
    voxels far from the click flip too, for better or worse, and an annotator who clicked here expects neither a
    distant edge to move nor a background click to add foreground. Kept from ``outputs`` (every key, e.g.
    ``probs``, ``entropy``, ``variance``): the changed marks and, for each class a changed mark now says, each
    connected component (26-/8-connected) of voxels newly labelled that class that touches such a mark or its
    1-voxel neighbourhood; where a mark was taken away (undo), each component of relabelled voxels that touches
    it. Everything else is ``previous``.

    Args:
        outputs: the re-sampled result, ``probs`` (B, C, *spatial) among its keys.
        previous: the result before these marks changed, with the same keys and shapes.
        marks: (B, 1, *spatial) the marks ``outputs`` was sampled with (class or :data:`UNKNOWN`).
        changed: (B, 1, *spatial) bool, the marks added, changed or taken away since ``previous``.
    """
    grid = tuple(outputs["probs"].shape[2:])
    for name, mask in (("marks", marks), ("changed", changed)):
        if mask.shape[1] != 1 or tuple(mask.shape[2:]) != grid:
            raise ValueError(f"{name} must be (B, 1, *spatial) of the outputs' grid {list(grid)}, got {tuple(mask.shape)}")
    # outside the box of what differs (a re-sampled slice or window) nothing can be kept: work inside it
    differs = changed.bool().to(outputs["probs"].device)
    for key, value in outputs.items():
        differs = differs | (value != previous[key].to(value)).any(dim=1, keepdim=True)
    keep = torch.zeros_like(differs)
    box = region_box(differs, grid)
    if box is not None:
        # one voxel wider per side, so the components' 1-voxel neighbourhood of a mark stays inside the crop
        crop = (slice(None), slice(None), *[slice(max(b.start - 1, 0), b.stop + 1) for b in box])
        keep[crop] = torch.from_numpy(
            _kept(outputs["probs"][crop], previous["probs"][crop], marks[crop], changed[crop])
        )[:, None].to(keep.device)
    return {k: torch.where(keep, v, previous[k].to(v)) for k, v in outputs.items()}


def _kept(new_probs: torch.Tensor, old_probs: torch.Tensor, marks: torch.Tensor, changed: torch.Tensor) -> np.ndarray:
    """(B, *spatial) bool: the voxels of the re-sampled result :func:`keep_changes_near_marks` keeps."""
    new = probabilities_to_labels(new_probs).cpu().numpy()[:, 0]
    old = probabilities_to_labels(old_probs.to(new_probs)).cpu().numpy()[:, 0]
    marks_np, changed_np = marks.cpu().numpy()[:, 0], changed.bool().cpu().numpy()[:, 0]
    structure = np.ones((3,) * (new.ndim - 1), dtype=bool)
    keep = changed_np.copy()
    for b in range(new.shape[0]):
        relabelled = new[b] != old[b]
        asked = [(marks_np[b] == UNKNOWN, relabelled)]  # undo: whatever reverts
        asked += [(marks_np[b] == value, relabelled & (new[b] == value)) for value in np.unique(marks_np[b][changed_np[b]])
                  if value != UNKNOWN]
        for where, flips in asked:
            components, _ = ndimage.label(flips, structure=structure)
            touched = np.unique(components[ndimage.binary_dilation(changed_np[b] & where, structure=structure)])
            keep[b] |= np.isin(components, touched[touched > 0])
    return keep


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
