"""Scores of one prediction of a test head: Dice / HD95 and the uncertainty metrics of ``medsegdiff.evaluation``.

The members' mean distribution is taken back to the native grid; the label is its argmax (also scored after keeping
its largest connected component, ``*_lcc``: the app's post-processing), the uncertainty its
normalised predictive entropy. Error detection (AUROC / AUPRC of the entropy for the wrong voxels) is judged over
the head and within ``BAND_MM`` of the reference surface; calibration (reliability / ECE, Brier, NLL) over the
predicted-or-reference foreground (and the band, for ECE). Member diversity (pairwise Dice, GED) and the
disagreement fraction of the entropy are computed on the 3 mm model grid (one resampling fewer per member).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from medsegdiff.evaluation import (
    auprc,
    auroc,
    brier,
    entropy_decomposition,
    foreground_region,
    generalised_energy_distance,
    nll,
    pairwise_dice,
    reliability,
    surface_band,
)
from medsegdiff.metrics import dice_per_class, hd95_per_class

from .grid import GridVolume

__all__ = ["BAND_MM", "NativeErrors", "native_errors", "judge", "largest_component"]

BAND_MM = 6.0


def _entropy(dist: np.ndarray) -> np.ndarray:
    return -(dist * np.log(np.clip(dist, 1e-12, None))).sum(axis=0) / math.log(dist.shape[0])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` reduced to its largest 26-connected component (the brain is one piece; skull or neck islands go)."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


class NativeErrors(NamedTuple):
    """A prediction of a test head on its native grid, as :func:`judge` and the boundary-shift bench score it."""

    distribution: np.ndarray
    """The mean class distribution (K, X, Y, Z)."""
    label: np.ndarray
    """Foreground: the distribution's argmax > 0."""
    reference: np.ndarray
    errors: np.ndarray
    """``label != reference``."""
    head: np.ndarray
    """The region AUROC is taken over: the head, the reference and the label."""
    band: np.ndarray
    """The voxels within :data:`BAND_MM` of the reference surface."""


def native_errors(volume: GridVolume, mean: np.ndarray) -> NativeErrors:
    """The mean class distribution ``mean`` (K, H, W, Z) of ``volume`` on its native grid, with its label, errors and
    the regions the uncertainty is judged over."""
    native = volume.to_native(mean, fill=[1.0] + [0.0] * (mean.shape[0] - 1))
    label = native.argmax(axis=0) > 0
    reference = volume.native_label > 0
    head = volume.native_head if volume.native_head is not None else np.ones_like(reference)
    band = surface_band(reference, volume.native_spacing, BAND_MM)
    return NativeErrors(native, label, reference, label != reference, head | reference | label, band)


def judge(volume: GridVolume, members: np.ndarray) -> dict[str, Any]:
    """Scores of member class distributions ``members`` (N, K, H, W, Z) of ``volume`` (binary task)."""
    mean = members.mean(axis=0)
    native, label, reference, errors, head, band = native_errors(volume, mean)
    spacing = volume.native_spacing
    out: dict[str, Any] = {
        "dice": dice_per_class(label.astype(np.uint8), reference.astype(np.uint8))[0],
        "hd95_mm": hd95_per_class(label.astype(np.uint8), reference.astype(np.uint8), 1, spacing)[0],
    }
    largest = largest_component(label)  # the app's default post-processing for a one-class model
    out["dice_lcc"] = dice_per_class(largest.astype(np.uint8), reference.astype(np.uint8))[0]
    out["hd95_lcc_mm"] = hd95_per_class(largest.astype(np.uint8), reference.astype(np.uint8), 1, spacing)[0]
    entropy = _entropy(native)
    prob = 1.0 - native[0]
    fg = foreground_region(label, reference)
    reliability_fg, reliability_6mm = reliability(prob[fg], reference[fg]), reliability(prob[band], reference[band])
    out.update({
        "auroc": auroc(entropy[head], errors[head]),
        "auroc_6mm": auroc(entropy[band], errors[band]),
        "auprc": auprc(entropy[head], errors[head]),
        "auprc_6mm": auprc(entropy[band], errors[band]),
        "error_fraction_head": float(errors[head].mean()),
        "errors_in_band": float(errors[band].sum() / max(int(errors.sum()), 1)),
        "ece_fg": reliability_fg["ece"],
        "ece_6mm": reliability_6mm["ece"],
        "reliability_fg": reliability_fg,
        "reliability_6mm": reliability_6mm,
        "brier": brier(prob[fg], reference[fg]),
        "nll": nll(prob[fg], reference[fg]),
    })
    if members.shape[0] >= 2:
        grid_labels = members.argmax(axis=1) > 0  # (N, H, W, Z)
        grid_reference = volume.label > 0
        region = (mean.argmax(axis=0) > 0) | grid_reference
        out["diversity"] = {
            "members": int(members.shape[0]),
            "pairwise_dice": pairwise_dice(list(grid_labels)),
            "ged": generalised_energy_distance(list(grid_labels), grid_reference),
            "disagreement_fraction": entropy_decomposition(members, region)["disagreement_fraction"],
        }
    else:
        out["diversity"] = None
    return out
