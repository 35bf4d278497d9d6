"""Summaries of a per-voxel uncertainty map for result JSONs and for the active-learning score.

The mean entropy of a whole head is mostly empty background; the score averages it over the bounding box of
the predicted foreground (grown by a margin), where the ensemble's disagreement matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medsegdiff.uncertainty import uncertainty_summary

__all__ = ["foreground_region", "region_score", "summarize"]


def foreground_region(label: np.ndarray, margin: int = 3) -> tuple[slice, ...] | None:
    """Bounding box of ``label > 0`` grown by ``margin`` voxels per side, or None when there is no foreground."""
    coords = np.nonzero(np.asarray(label) > 0)
    if coords[0].size == 0:
        return None
    shape = np.shape(label)
    return tuple(slice(max(int(c.min()) - margin, 0), min(int(c.max()) + margin + 1, n)) for c, n in zip(coords, shape))


def region_score(entropy: np.ndarray, label: np.ndarray, margin: int = 3) -> float:
    """Mean entropy inside :func:`foreground_region`; the whole volume's mean when nothing was segmented."""
    entropy = np.asarray(entropy, dtype=np.float32)
    region = foreground_region(label, margin)
    return float(entropy[region].mean() if region is not None else entropy.mean())


def summarize(entropy: np.ndarray, label: np.ndarray, threshold: float = 0.5, margin: int = 3) -> dict[str, Any]:
    """``mean``, ``max``, ``uncertain_fraction`` (> ``threshold``) of the volume, plus the foreground-region mean."""
    summary = uncertainty_summary(torch.as_tensor(np.asarray(entropy, dtype=np.float32)), threshold)
    summary["foreground_region_mean"] = region_score(entropy, label, margin)
    summary["foreground_voxels"] = int((np.asarray(label) > 0).sum())
    return summary
