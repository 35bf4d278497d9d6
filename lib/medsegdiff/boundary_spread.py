"""A click that moves the boundary along the surface near it, where the ensemble found that as likely.

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
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .fusion import class_distribution, probabilities_to_labels
from .interaction import UNKNOWN, KnownRegion

__all__ = ["INTENSITY_PERCENTILES", "spread_along_boundary"]

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
    probs = outputs["probs"]
    grid = tuple(probs.shape[2:])
    for name, mask in (("marks", marks), ("changed", changed)):
        if mask.shape[1] != 1 or tuple(mask.shape[2:]) != grid:
            raise ValueError(f"{name} must be (B, 1, *spatial) of the outputs' grid {list(grid)}, got {tuple(mask.shape)}")
    if image is not None and tuple(image.shape[2:]) != grid:
        raise ValueError(f"image must be (B, channels, *spatial) of the outputs' grid {list(grid)}, got {tuple(image.shape)}")
    if reach == 0 or not changed.any():
        return outputs
    before = class_distribution(previous["probs"].to(probs)).cpu().numpy()
    old = probabilities_to_labels(previous["probs"].to(probs)).cpu().numpy()[:, 0]
    now = probabilities_to_labels(probs).cpu().numpy()[:, 0]
    marks_np, changed_np = marks.cpu().numpy()[:, 0], changed.bool().cpu().numpy()[:, 0]
    image_np = None if image is None else image[:, 0].float().cpu().numpy()
    structure = np.ones((3,) * len(grid), dtype=bool)
    spread = np.full(marks_np.shape, UNKNOWN, dtype=np.int64)
    for b in range(marks_np.shape[0]):
        for value in np.unique(marks_np[b][changed_np[b]]):
            if value == UNKNOWN:
                continue
            corrected = changed_np[b] & (marks_np[b] == value) & (old[b] != value)
            if not corrected.any():
                continue
            level = np.median(before[b, value][corrected])
            # only within reach (+ 1 for the shell's neighbourhood) of the corrected voxels: work in their box
            where = np.argwhere(corrected)
            box = tuple(slice(max(int(lo) - reach - 1, 0), int(hi) + reach + 2)
                        for lo, hi in zip(where.min(axis=0), where.max(axis=0)))
            corrected_box, now_box = corrected[box], now[b][box] == value
            near = ndimage.distance_transform_edt(~corrected_box) <= reach
            shell = ndimage.binary_dilation(now_box, structure=structure) & ~now_box
            candidates = shell & near & (marks_np[b][box] == UNKNOWN) & (before[b, value][box] >= level)
            if image_np is not None:
                low, high = np.percentile(image_np[b][corrected], INTENSITY_PERCENTILES)
                candidates &= (image_np[b][box] >= low) & (image_np[b][box] <= high)
            components, _ = ndimage.label(candidates | corrected_box, structure=structure)
            touched = np.unique(components[corrected_box])
            spread[b][box][np.isin(components, touched[touched > 0]) & candidates] = value
    spread_t = torch.from_numpy(spread)[:, None].to(probs.device)
    where = spread_t != UNKNOWN
    if not where.any():
        return outputs
    forced = KnownRegion(spread_t).probabilities(probs.shape[1]).to(probs)
    return {**outputs, "probs": torch.where(where, forced, probs)}
