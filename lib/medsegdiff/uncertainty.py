"""Per-voxel uncertainty from ensemble members: predictive entropy of the mean and variance across members."""

from __future__ import annotations

import math

import torch

from .fusion import class_distribution

__all__ = ["predictive_entropy", "member_variance", "with_boundary_shifts", "shown_uncertainty", "widen_mask", "uncertainty_summary"]


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


def _grow(maps: torch.Tensor, margin: int) -> torch.Tensor:
    """The largest value within ``margin`` voxels (a (2 margin + 1)-wide cube) of (B, C, H, W[, D]) maps."""
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0 voxels, got {margin}")
    if maps.ndim not in (4, 5):
        raise ValueError(f"maps must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(maps.shape)}")
    # separable: one voxel along each axis at a time, the maximum of three shifted copies (30x faster on a CPU than
    # max_pool3d); voxels beyond the border do not count
    for _ in range(margin):
        for dim in range(2, maps.ndim):
            n, edge = maps.shape[dim], torch.full_like(maps.narrow(dim, 0, 1), -math.inf)
            padded = torch.cat([edge, maps, edge], dim=dim)
            maps = torch.maximum(torch.maximum(padded.narrow(dim, 0, n), maps), padded.narrow(dim, 2, n))
    return maps


def with_boundary_shifts(probs: torch.Tensor, margin: int) -> torch.Tensor:
    """The mean of the fused foreground probabilities ``probs`` (B, C, H, W[, D]) and two copies of them with every
    class's boundary moved ``margin`` voxels: out (the largest probability within ``margin`` voxels, a grey
    dilation) and in (the smallest, a grey erosion).

    A reference drawn by another tool may end a voxel further in or out than the ensemble's boundary; the entropy
    of this mean is high on both sides of the boundary as well as on it. ``margin`` 0 returns ``probs``.

    Raises:
        ValueError: ``margin`` is negative or ``probs`` is not 4D / 5D.
    """
    grown = _grow(probs, margin)  # checks margin and shape
    return probs if margin == 0 else (-_grow(-probs, margin) + probs + grown) / 3.0


def shown_uncertainty(probs: torch.Tensor, entropy: torch.Tensor, margin: int) -> torch.Tensor:
    """The uncertainty an annotator is shown (B, 1, *spatial): the predictive entropy of ``probs`` with their
    boundary shifted ``margin`` voxels both ways (:func:`with_boundary_shifts`), except where ``entropy`` is at
    its maximum, 1 (the voxels a click flagged), which stay there. ``margin`` 0: ``entropy`` as it is."""
    if margin == 0:
        return entropy
    return torch.where(entropy >= 1.0, entropy, predictive_entropy(with_boundary_shifts(probs, margin)))


def widen_mask(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """A bool mask (*spatial, 2D or 3D) grown by ``margin`` voxels: the voxels whose :func:`shown_uncertainty` a
    change of ``mask``'s voxels can reach."""
    return _grow(mask[None, None].float(), margin)[0, 0] > 0


def uncertainty_summary(uncertainty: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Mean, max and fraction of voxels above ``threshold`` of a normalised uncertainty map."""
    u = uncertainty.float()
    return {
        "mean": float(u.mean()),
        "max": float(u.max()),
        "uncertain_fraction": float((u > threshold).float().mean()),
        "threshold": threshold,
    }
