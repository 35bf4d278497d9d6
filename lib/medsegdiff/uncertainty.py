"""Per-voxel uncertainty from ensemble members: predictive entropy of the mean and variance across members."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fusion import class_distribution

__all__ = ["predictive_entropy", "member_variance", "widen_to_neighbours", "uncertainty_summary"]


def predictive_entropy(mean_probs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Entropy of the mean class distribution, (B, C, *spatial) → (B, 1, *spatial).

    Args:
        mean_probs: soft-mean foreground probabilities of the members.
        normalize: divide by log(C + 1) so the value lies in [0, 1].
    """
    dist = class_distribution(mean_probs)
    entropy = -(dist * torch.log(dist.clamp_min(1e-12))).sum(dim=1, keepdim=True)
    return entropy / math.log(dist.shape[1]) if normalize else entropy


def member_variance(member_probs: torch.Tensor) -> torch.Tensor:
    """Variance across members, averaged over classes: (N, B, C, *spatial) → (B, 1, *spatial)."""
    if member_probs.shape[0] < 2:
        return torch.zeros_like(member_probs[0, :, :1])
    return member_probs.var(dim=0, unbiased=False).mean(dim=1, keepdim=True)


def widen_to_neighbours(uncertainty: torch.Tensor, margin: int) -> torch.Tensor:
    """Each voxel's uncertainty raised to the largest within ``margin`` voxels (a (2 margin + 1)-wide cube).

    An ensemble is most uncertain on its own boundary, while a reference drawn with another convention may end
    a voxel further in or out; widening the uncertain band by ``margin`` voxels covers where the boundary could
    be. Works for (B, 1, H, W) and (B, 1, H, W, D); ``margin`` 0 returns the input.

    Raises:
        ValueError: ``margin`` is negative or the map is not 4D / 5D.
    """
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0 voxels, got {margin}")
    if uncertainty.ndim not in (4, 5):
        raise ValueError(f"uncertainty must be (B, 1, H, W) or (B, 1, H, W, D), got shape {tuple(uncertainty.shape)}")
    if margin == 0:
        return uncertainty
    pool = F.max_pool2d if uncertainty.ndim == 4 else F.max_pool3d
    return pool(uncertainty, kernel_size=2 * margin + 1, stride=1, padding=margin)


def uncertainty_summary(uncertainty: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Mean, max and fraction of voxels above ``threshold`` of a normalised uncertainty map."""
    u = uncertainty.float()
    return {
        "mean": float(u.mean()),
        "max": float(u.max()),
        "uncertain_fraction": float((u > threshold).float().mean()),
        "threshold": threshold,
    }
