"""Per-case Dice and HD95 on label maps at native resolution, through ``monai.metrics``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

__all__ = ["dice_per_class", "hd95_per_class"]


def _onehot(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels)).long()[None, None]
    return one_hot(t, num_classes + 1, dim=1)


def dice_per_class(prediction, reference, num_classes: int = 1) -> list[float]:
    """Dice of each foreground class (1..C) between two integer label maps of one case."""
    if np.shape(prediction) != np.shape(reference):
        raise ValueError(f"prediction shape {np.shape(prediction)} differs from reference {np.shape(reference)}")
    d = compute_dice(_onehot(prediction, num_classes), _onehot(reference, num_classes), include_background=False, ignore_empty=False)
    return [float(v) for v in d[0]]


def hd95_per_class(prediction, reference, num_classes: int = 1, spacing: Sequence[float] | None = None) -> list[float]:
    """95th-percentile Hausdorff distance (in mm when ``spacing`` is given) of each foreground class."""
    if np.shape(prediction) != np.shape(reference):
        raise ValueError(f"prediction shape {np.shape(prediction)} differs from reference {np.shape(reference)}")
    h = compute_hausdorff_distance(
        _onehot(prediction, num_classes),
        _onehot(reference, num_classes),
        include_background=False,
        percentile=95,
        spacing=list(spacing) if spacing is not None else None,
    )
    return [float(v) for v in h[0]]
