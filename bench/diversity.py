"""How different the ensemble members are, per sampler setting: DDIM steps × eta on the held-out slices.

For each (steps, eta): Dice of the fused label, mean pairwise Dice between members (1 = identical members),
generalised energy distance to the reference, the share of the predictive entropy that is member disagreement
(mutual information / total entropy), the AUROC of the entropy for wrong pixels, and seconds per slice.
The same slices and model as the sampling-cost section, every setting side by side in one run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medsegdiff.evaluation import auroc, entropy_decomposition, generalised_energy_distance, pairwise_dice
from medsegdiff.fusion import class_distribution
from medsegdiff.metrics import dice_per_class
from medsegdiff.sampling import EnsembleSampler

from .machine import synchronize

__all__ = ["diversity_sweep"]


def _setting(sampler: EnsembleSampler, network, images: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    dice, pairwise, ged, fractions, scores, wrong, seconds = [], [], [], [], [], [], []
    for i in range(len(images)):
        start = time.perf_counter()
        result = sampler(network, images[i : i + 1], seed=i)
        synchronize(images.device)
        seconds.append(time.perf_counter() - start)
        reference = labels[i, 0] > 0
        label = result.label[0, 0].cpu().numpy()
        members = [(m[0, 0] > 0.5).cpu().numpy() for m in result.member_probs]
        dice.append(dice_per_class(label, labels[i, 0])[0])
        pairwise.append(pairwise_dice(members))
        ged.append(generalised_energy_distance(members, reference))
        dist = class_distribution(result.member_probs[:, 0]).cpu().numpy()  # (N, 2, H, W)
        fractions.append(entropy_decomposition(dist)["disagreement_fraction"])
        scores.append(result.entropy[0, 0].cpu().numpy().ravel())
        wrong.append(((label > 0) != reference).ravel())
    fractions = [f for f in fractions if f is not None]
    return {
        "steps": sampler.num_inference_steps, "eta": sampler.eta, "members": sampler.num_ensemble,
        "dice_mean": float(np.mean(dice)),
        "member_pairwise_dice": float(np.mean(pairwise)),
        "ged": float(np.mean(ged)),
        "disagreement_fraction": float(np.mean(fractions)) if fractions else None,
        "auroc_wrong": auroc(np.concatenate(scores), np.concatenate(wrong)),
        "seconds_median": float(np.median(seconds)),
    }


def diversity_sweep(
    network, diffusion, images: torch.Tensor, labels: np.ndarray, steps: tuple[int, ...], etas: tuple[float, ...], members: int
) -> list[dict[str, Any]]:
    """Every (steps, eta) pair on the same slices with the same seeds."""
    return [_setting(EnsembleSampler(diffusion, "ddim", k, members, eta=eta), network, images, labels) for k in steps for eta in etas]
