"""Judging an uncertainty map and an ensemble against a reference segmentation (numpy / torch only).

Error detection: :func:`auroc` and :func:`auprc` of an uncertainty score for the voxels the prediction gets
wrong, over any region (e.g. the head, or :func:`surface_band` — within a few mm of the reference surface).
Calibration: :func:`reliability` (bins and ECE), :func:`brier` and :func:`nll` over the voxels that matter
(:func:`foreground_region`: predicted or reference foreground). Ensembles: :func:`pairwise_dice`,
:func:`generalised_energy_distance` with 1 - Dice as the distance, and :func:`entropy_decomposition` (total
predictive entropy = expected member entropy + mutual information, i.e. member disagreement).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "auroc",
    "auprc",
    "surface_band",
    "foreground_region",
    "reliability",
    "brier",
    "nll",
    "binary_dice",
    "pairwise_dice",
    "generalised_energy_distance",
    "entropy_decomposition",
]

_EPS = 1e-6


def _flat(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores ({scores.size} values) and positives ({positives.size}) differ in size")
    return scores, positives


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positives`` (Mann-Whitney U, tied scores count half).

    Returns None when there are no positives or no negatives (the area is undefined).
    """
    scores, pos = _flat(scores, positives)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    midrank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank, averaged over ties
    rank_sum = float(midrank[inverse][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auprc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Average precision of ``scores`` for ``positives``: sum over thresholds of (R_k - R_(k-1)) * P_k.

    Tied scores form one threshold. Returns None when there are no positives.
    """
    scores, pos = _flat(scores, positives)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return None
    values, inverse = np.unique(-scores, return_inverse=True)  # ascending in -score = descending score
    tp = np.cumsum(np.bincount(inverse, weights=pos, minlength=values.size))
    seen = np.cumsum(np.bincount(inverse, minlength=values.size))
    precision = tp / seen
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def surface_band(reference: np.ndarray, spacing: Sequence[float], band_mm: float = 6.0) -> np.ndarray:
    """Voxels within ``band_mm`` of the reference surface (inside or outside), distances in mm from ``spacing``.

    Inside the reference the distance is to the nearest background voxel, outside to the nearest reference
    voxel (``scipy.ndimage.distance_transform_edt`` with the voxel spacing).
    """
    reference = np.asarray(reference, dtype=bool)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing has {len(spacing)} entries, the reference has {reference.ndim} axes")
    if not reference.any() or reference.all():
        raise ValueError("the reference has no surface (it is empty or fills the volume)")
    inside = ndi.distance_transform_edt(reference, sampling=spacing)
    outside = ndi.distance_transform_edt(~reference, sampling=spacing)
    return np.where(reference, inside, outside) <= band_mm


def foreground_region(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The voxels that matter for calibration: predicted or reference foreground."""
    return (np.asarray(prediction) > 0) | (np.asarray(reference) > 0)


def reliability(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram of foreground probabilities ``prob`` against binary ``truth``, and its ECE.

    Equal-width bins on [0, 1] (p = 1 falls in the last bin). ECE = sum over bins of
    (count / total) * |observed rate - mean probability|.

    Returns:
        ``bin_edges``, per bin ``mean_probability``, ``observed_rate`` (None for empty bins) and ``count``,
        and ``ece``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    prob, truth = _flat(prob, truth)
    if prob.size == 0:
        raise ValueError("no voxels to judge")
    index = np.clip((prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=prob, minlength=bins)
    sum_t = np.bincount(index, weights=truth.astype(np.float64), minlength=bins)
    filled = count > 0
    mean_p = np.where(filled, sum_p / np.maximum(count, 1), np.nan)
    rate = np.where(filled, sum_t / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[filled] / count.sum() * np.abs(rate[filled] - mean_p[filled])))
    return {
        "bin_edges": np.linspace(0, 1, bins + 1).tolist(),
        "mean_probability": [float(v) if f else None for v, f in zip(mean_p, filled)],
        "observed_rate": [float(v) if f else None for v, f in zip(rate, filled)],
        "count": count.tolist(),
        "ece": ece,
    }


def brier(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared difference between the foreground probability and the binary truth."""
    prob, truth = _flat(prob, truth)
    return float(np.mean((prob - truth) ** 2))


def nll(prob: np.ndarray, truth: np.ndarray, eps: float = _EPS) -> float:
    """Mean binary negative log-likelihood (nats), probabilities clipped to [eps, 1 - eps]."""
    prob, truth = _flat(prob, truth)
    p = np.clip(prob, eps, 1.0 - eps)
    return float(-np.mean(np.where(truth, np.log(p), np.log1p(-p))))


def binary_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (they agree)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def pairwise_dice(members: Sequence[np.ndarray]) -> float:
    """Mean Dice over all pairs of distinct members (binary masks); 1.0 = identical members, no diversity."""
    if len(members) < 2:
        raise ValueError(f"pairwise Dice needs >= 2 members, got {len(members)}")
    return float(np.mean([binary_dice(a, b) for a, b in itertools.combinations(members, 2)]))


def generalised_energy_distance(members: Sequence[np.ndarray], reference: np.ndarray) -> float:
    """Squared generalised energy distance with d = 1 - Dice and one reference (Kohl et al. 2018).

    D² = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]; with a single reference the last term is 0, and
    E[d(S, S')] is the mean over pairs of distinct members.
    """
    if len(members) < 2:
        raise ValueError(f"the energy distance needs >= 2 members, got {len(members)}")
    to_reference = np.mean([1.0 - binary_dice(m, reference) for m in members])
    between = 1.0 - pairwise_dice(members)
    return float(2.0 * to_reference - between)


def _entropy(dist: np.ndarray, axis: int) -> np.ndarray:
    return -np.sum(dist * np.log(np.clip(dist, 1e-12, None)), axis=axis)


def entropy_decomposition(member_dist: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """Split the predictive entropy of an ensemble into member softness and member disagreement.

    Args:
        member_dist: (N, K, *spatial) class distributions of N members over K classes (each sums to 1 over K).
        region: optional boolean mask over ``*spatial``: only these voxels are summed.

    Returns:
        ``total`` = sum H[mean_m p_m] (entropy of the mean), ``expected`` = sum mean_m H[p_m] (aleatoric part),
        ``mutual_information`` = total - expected (disagreement), and ``disagreement_fraction`` =
        mutual_information / total (0 when the members agree exactly; None when there is no entropy at all).
    """
    member_dist = np.asarray(member_dist, dtype=np.float64)
    if member_dist.ndim < 3:
        raise ValueError(f"member_dist must be (N, K, *spatial), got shape {member_dist.shape}")
    total = _entropy(member_dist.mean(axis=0), axis=0)
    expected = _entropy(member_dist, axis=1).mean(axis=0)
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != total.shape:
            raise ValueError(f"region {region.shape} does not match the spatial shape {total.shape}")
        total, expected = total[region], expected[region]
    t, e = float(total.sum()), float(expected.sum())
    return {
        "total": t,
        "expected": e,
        "mutual_information": t - e,
        "disagreement_fraction": (t - e) / t if t > 0 else None,
    }
