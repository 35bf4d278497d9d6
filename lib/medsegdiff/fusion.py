"""Fusion of ensemble members into one segmentation: soft mean, majority vote and STAPLE.

Every function takes member foreground probabilities ``(N, B, C, *spatial)`` (N members, C foreground
classes) and returns fused per-class foreground probabilities ``(B, C, *spatial)``; :func:`probabilities_to_labels`
turns those into a label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FUSIONS",
    "class_distribution",
    "probabilities_to_labels",
    "mean_fusion",
    "majority_vote",
    "StapleResult",
    "staple",
    "staple_fusion",
    "fuse",
]

FUSIONS = ("mean", "vote", "staple")


def class_distribution(probs: torch.Tensor) -> torch.Tensor:
    """Foreground probabilities (…, C, *spatial) → a distribution over C + 1 classes (background first).

    C = 1: (1 - p, p). C > 1: the one-hot channels are normalised, background gets what is left (≥ 0).
    """
    background = (1.0 - probs.sum(dim=1, keepdim=True)).clamp_min(0.0)
    dist = torch.cat([background, probs], dim=1)
    return dist / dist.sum(dim=1, keepdim=True).clamp_min(1e-8)


def probabilities_to_labels(probs: torch.Tensor) -> torch.Tensor:
    """Fused foreground probabilities (B, C, *spatial) → integer labels (B, 1, *spatial), 0 = background."""
    if probs.shape[1] == 1:
        # argmax of (max(1 - p, 0), p) / sum with argmax's first-max ties: p > 1 - p, i.e. p > 0.5 in floating
        # point too (1 - p is exact for p >= 0.5); no distribution built (a 1 mm head's label 5x faster)
        return (probs > 0.5).long()
    dist = class_distribution(probs)
    # argmax over a contiguous last axis: 9x faster on CPU than over dim 1 of a volume, same first-max ties
    return dist.movedim(1, -1).contiguous().argmax(dim=-1).unsqueeze(1)


def mean_fusion(member_probs: torch.Tensor) -> torch.Tensor:
    """Soft mean of the member probabilities."""
    return member_probs.mean(dim=0)


def _member_labels(member_probs: torch.Tensor) -> torch.Tensor:
    n, b = member_probs.shape[:2]
    flat = member_probs.reshape(n * b, *member_probs.shape[2:])
    return probabilities_to_labels(flat).reshape(n, b, 1, *member_probs.shape[3:])


def majority_vote(member_probs: torch.Tensor) -> torch.Tensor:
    """Each member votes its hard label; the fused map is the fraction of votes per foreground class."""
    num_classes = member_probs.shape[2]
    labels = _member_labels(member_probs)
    votes = torch.stack([(labels[:, :, 0] == c + 1).float().mean(dim=0) for c in range(num_classes)], dim=1)
    return votes


@dataclass
class StapleResult:
    """Outcome of binary STAPLE.

    Attributes:
        posterior: P(true label = 1) per voxel, the shape of one decision map.
        sensitivity: estimated sensitivity p_j of each rater.
        specificity: estimated specificity q_j of each rater.
        iterations: EM iterations run.
        converged: whether the change fell below the tolerance before the cap.
    """

    posterior: torch.Tensor
    sensitivity: torch.Tensor
    specificity: torch.Tensor
    iterations: int
    converged: bool


def staple(decisions: torch.Tensor, max_iterations: int = 100, tolerance: float = 1e-5) -> StapleResult:
    """Binary STAPLE (Warfield et al. 2004), expectation-maximisation iterated to convergence.

    Args:
        decisions: (N, *spatial) binary decisions of N raters.
        max_iterations: cap on EM iterations.
        tolerance: stop when no rater's sensitivity or specificity changes by more than this.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    d = decisions.reshape(decisions.shape[0], -1).double()
    prior = d.mean().clamp(1e-6, 1 - 1e-6)
    p = torch.full((d.shape[0], 1), 0.99, dtype=d.dtype, device=d.device)
    q = torch.full_like(p, 0.99)
    converged, iteration = False, 0
    for iteration in range(1, max_iterations + 1):
        # E-step: posterior of the true label being foreground at each voxel.
        log_a = torch.log(prior) + (d * torch.log(p) + (1 - d) * torch.log1p(-p)).sum(0)
        log_b = torch.log1p(-prior) + ((1 - d) * torch.log(q) + d * torch.log1p(-q)).sum(0)
        w = torch.sigmoid(log_a - log_b)
        # M-step: each rater's sensitivity and specificity.
        new_p = ((d * w).sum(1, keepdim=True) / w.sum().clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
        new_q = (((1 - d) * (1 - w)).sum(1, keepdim=True) / (1 - w).sum().clamp_min(1e-12)).clamp(1e-6, 1 - 1e-6)
        change = max((new_p - p).abs().max().item(), (new_q - q).abs().max().item())
        p, q = new_p, new_q
        if change < tolerance:
            converged = True
            break
    posterior = w.reshape(decisions.shape[1:]).to(torch.float32)
    return StapleResult(posterior, p.squeeze(1).float(), q.squeeze(1).float(), iteration, converged)


def staple_fusion(member_probs: torch.Tensor, max_iterations: int = 100, tolerance: float = 1e-5) -> torch.Tensor:
    """STAPLE per image and per class (one-vs-rest) on the members' hard labels; returns posteriors."""
    labels = _member_labels(member_probs)
    fused = torch.empty_like(member_probs[0])
    for b in range(member_probs.shape[1]):
        for c in range(member_probs.shape[2]):
            decisions = (labels[:, b, 0] == c + 1).float()
            fused[b, c] = staple(decisions, max_iterations, tolerance).posterior
    return fused


def fuse(member_probs: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Fuse (N, B, C, *spatial) member probabilities with ``method`` in ``("mean", "vote", "staple")``."""
    if method == "mean":
        return mean_fusion(member_probs)
    if method == "vote":
        return majority_vote(member_probs)
    if method == "staple":
        return staple_fusion(member_probs)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {method!r}")
