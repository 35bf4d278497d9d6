"""Per-voxel uncertainty from ensemble members: predictive entropy of the mean and variance across members."""

from __future__ import annotations

import math

import torch

from .fusion import class_distribution

__all__ = ["predictive_entropy", "member_variance", "uncertainty_summary"]


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


def uncertainty_summary(uncertainty: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Mean, max and fraction of voxels above ``threshold`` of a normalised uncertainty map."""
    u = uncertainty.float()
    return {
        "mean": float(u.mean()),
        "max": float(u.max()),
        "uncertain_fraction": float((u > threshold).float().mean()),
        "threshold": threshold,
    }
