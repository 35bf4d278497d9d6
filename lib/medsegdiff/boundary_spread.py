"""A click that moves the boundary along the surface near it, where the ensemble found that as likely, and flags
the voxels like the ones it corrected everywhere else.

Most of what the automatic label gets wrong on a held-out head is a rim one voxel thick around the whole structure
(bench ``error_structure``): the boundary drawn one voxel in or out of where the reference puts it. A click on
that rim fixes the ball it marks and what the re-sampling connects to it; the rest of the rim nearby stays wrong.
:func:`spread_along_boundary` also moves the boundary by one voxel around the click, towards the clicked class,
on the voxels the ensemble found at least as likely to be of that class as the voxels the click corrected. The
ensemble's fused probability orders the voxels and the click sets the level, so the spread stops where the ensemble
was surer of the other class than at the click. Given the image, the spread also keeps to voxels whose intensity
lies within the central 80 % of the corrected voxels' (:data:`INTENSITY_PERCENTILES`): the level alone is often
≈ 0 (a click corrects voxels the ensemble was sure of), and then the spread ran along the boundary over tissue
unlike the clicked one (bench ``interactive``: wider spreads collapsed without this, and were stable with it).

:func:`doubt_like_corrected` takes the same voxels anywhere in the volume, with no reach, and raises their
uncertainty instead of moving the label: after a click the uncertainty map points at the rest of the rim the
click found.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage

from .fusion import class_distribution, probabilities_to_labels
from .interaction import UNKNOWN, KnownRegion

__all__ = ["INTENSITY_PERCENTILES", "spread_along_boundary", "doubt_like_corrected"]

INTENSITY_PERCENTILES = (10.0, 90.0)
"""The intensity range of the corrected voxels the spread keeps to (percentiles), when given the image."""


def spread_along_boundary(
    outputs: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], marks: torch.Tensor, changed: torch.Tensor,
    reach: int, image: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``outputs`` with the boundary moved one voxel towards each changed mark's class near the mark.

    For each class ``c`` a changed mark says, the voxels the marks correct are those of class ``c`` that
    ``previous`` labelled otherwise; the level is the median of their class-``c`` probability in ``previous``. Then
    the unmarked voxels just outside the class-``c`` region of ``outputs`` (26-/8-neighbours of it), within
    ``reach`` voxels of a corrected voxel, whose class-``c`` probability in ``previous`` is at least that level
    (and, given ``image``, whose intensity lies within the :data:`INTENSITY_PERCENTILES` of the corrected voxels')
    become class ``c``: kept are the connected components of them (with the corrected voxels) that touch a
    corrected voxel. Their ``probs`` become one-hot of that class; their ``entropy`` and ``variance`` stay what
    the ensemble said (the spread is the click's guess, not a mark: the uncertainty map still shows them), and
    every other voxel and key is ``outputs``'.

    Args:
        outputs: the interaction's result (``probs`` (B, C, *spatial), ``entropy``, ``variance``, ...).
        previous: the result before these marks changed (``probs`` of the same shape).
        marks: (B, 1, *spatial) the marks (class or :data:`~medsegdiff.interaction.UNKNOWN`).
        changed: (B, 1, *spatial) bool, the marks added or changed since ``previous``.
        reach: how far from a corrected voxel the boundary moves, in voxels (0: not at all).
        image: (B, channels, *spatial) the image the outputs were sampled from (its first channel is read), or None.

    Raises:
        ValueError: ``reach`` < 0, or the maps do not match the outputs' grid.
    """
    if reach < 0:
        raise ValueError(f"reach must be >= 0 voxels, got {reach}")
    _check_grids(outputs, marks, changed, image)
    probs = outputs["probs"]
    if reach == 0 or not changed.any():
        return outputs
    spread = np.full(marks.shape[:1] + marks.shape[2:], UNKNOWN, dtype=np.int64)
    for b, value, corrected, shell, alike in _corrections(outputs, previous, marks, changed, image):
        # only within reach (+ 1 for the shell's neighbourhood) of the corrected voxels: work in their box
        where = np.argwhere(corrected)
        box = tuple(slice(max(int(lo) - reach - 1, 0), int(hi) + reach + 2)
                    for lo, hi in zip(where.min(axis=0), where.max(axis=0)))
        corrected_box = corrected[box]
        near = ndimage.distance_transform_edt(~corrected_box) <= reach
        candidates = shell[box] & alike[box] & near
        components, _ = ndimage.label(candidates | corrected_box, structure=np.ones((3,) * corrected.ndim, dtype=bool))
        touched = np.unique(components[corrected_box])
        spread[b][box][np.isin(components, touched[touched > 0]) & candidates] = value
    spread_t = torch.from_numpy(spread)[:, None].to(probs.device)
    where = spread_t != UNKNOWN
    if not where.any():
        return outputs
    forced = KnownRegion(spread_t).probabilities(probs.shape[1]).to(probs)
    return {**outputs, "probs": torch.where(where, forced, probs)}


def doubt_like_corrected(
    outputs: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], marks: torch.Tensor, changed: torch.Tensor,
    image: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``outputs`` with the uncertainty raised to its maximum on the voxels anywhere that look like what the new
    marks corrected.

    A click on a held-out head's error usually lands on a rim the network drew one voxel off all around (bench
    ``error_structure``), so the voxels like the corrected ones elsewhere are likely wrong too, though the ensemble
    was as sure of them as of the corrected ones. Those voxels are the ones :func:`spread_along_boundary` would
    move with an unlimited reach: just outside the current region of the mark's class, unmarked, at least as
    likely of that class in ``previous`` as the corrected voxels, and (given ``image``) of an intensity within
    theirs. Their ``entropy`` becomes 1 (the normalised maximum: "look here") where it was lower; their label,
    ``probs`` and every other key stay ``outputs``'.

    Args:
        outputs: the interaction's result (``probs`` (B, C, *spatial) and ``entropy`` (B, 1, *spatial) among them).
        previous: the result before these marks changed (``probs`` of the same shape).
        marks: (B, 1, *spatial) the marks (class or :data:`~medsegdiff.interaction.UNKNOWN`).
        changed: (B, 1, *spatial) bool, the marks added or changed since ``previous``.
        image: (B, channels, *spatial) the image the outputs were sampled from (its first channel is read), or None.

    Raises:
        ValueError: the maps do not match the outputs' grid.
    """
    _check_grids(outputs, marks, changed, image)
    if not changed.any():
        return outputs
    flagged = np.zeros(marks.shape[:1] + marks.shape[2:], dtype=bool)
    for b, _, _, shell, alike in _corrections(outputs, previous, marks, changed, image):
        flagged[b] |= shell & alike
    if not flagged.any():
        return outputs
    entropy = outputs["entropy"]
    where = torch.from_numpy(flagged)[:, None].to(entropy.device)
    return {**outputs, "entropy": torch.where(where, torch.clamp(entropy, min=1.0), entropy)}


def _check_grids(outputs: dict[str, torch.Tensor], marks: torch.Tensor, changed: torch.Tensor,
                 image: torch.Tensor | None) -> None:
    grid = tuple(outputs["probs"].shape[2:])
    for name, mask in (("marks", marks), ("changed", changed)):
        if mask.shape[1] != 1 or tuple(mask.shape[2:]) != grid:
            raise ValueError(f"{name} must be (B, 1, *spatial) of the outputs' grid {list(grid)}, got {tuple(mask.shape)}")
    if image is not None and tuple(image.shape[2:]) != grid:
        raise ValueError(f"image must be (B, channels, *spatial) of the outputs' grid {list(grid)}, got {tuple(image.shape)}")


def _corrections(
    outputs: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], marks: torch.Tensor, changed: torch.Tensor,
    image: torch.Tensor | None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """For each batch item ``b`` and class ``value`` a changed mark says that corrects voxels: the corrected voxels
    (marked ``value``, labelled otherwise in ``previous``), the shell (voxels just outside the ``value`` region of
    ``outputs``, 26-/8-neighbours) and the voxels alike (unmarked, class-``value`` probability in ``previous`` at
    least the corrected voxels' median, and given ``image`` an intensity within their :data:`INTENSITY_PERCENTILES`)."""
    probs = outputs["probs"]
    before = class_distribution(previous["probs"].to(probs)).cpu().numpy()
    old = probabilities_to_labels(previous["probs"].to(probs)).cpu().numpy()[:, 0]
    now = probabilities_to_labels(probs).cpu().numpy()[:, 0]
    marks_np, changed_np = marks.cpu().numpy()[:, 0], changed.bool().cpu().numpy()[:, 0]
    image_np = None if image is None else image[:, 0].float().cpu().numpy()
    structure = np.ones((3,) * (marks_np.ndim - 1), dtype=bool)
    for b in range(marks_np.shape[0]):
        for value in np.unique(marks_np[b][changed_np[b]]):
            if value == UNKNOWN:
                continue
            corrected = changed_np[b] & (marks_np[b] == value) & (old[b] != value)
            if not corrected.any():
                continue
            region = now[b] == value
            shell = ndimage.binary_dilation(region, structure=structure) & ~region
            alike = (marks_np[b] == UNKNOWN) & (before[b, value] >= np.median(before[b, value][corrected]))
            if image_np is not None:
                low, high = np.percentile(image_np[b][corrected], INTENSITY_PERCENTILES)
                alike &= (image_np[b] >= low) & (image_np[b] <= high)
            yield b, int(value), corrected, shell, alike
