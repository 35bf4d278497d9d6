"""Uncertainty-map metrics against values worked out by hand (see the comment on each case)."""

from __future__ import annotations

import math

import numpy as np
import pytest

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

SCORES = np.array([0.1, 0.4, 0.35, 0.8])
POSITIVES = np.array([0, 0, 1, 1])


def test_auroc_counts_correctly_ordered_pairs():
    # pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert auroc(SCORES, POSITIVES) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half: (0.5 vs 0.5 -> 1/2) + (0.5 vs 0.2 -> 1) over 2 pairs
    assert auroc(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0])) == pytest.approx(0.75)
    assert auroc(SCORES, np.zeros(4)) is None
    assert auroc(SCORES, np.ones(4)) is None


def test_auprc_is_average_precision_over_thresholds():
    # descending: 0.8 (pos) P=1 R=.5; 0.4 (neg) R unchanged; 0.35 (pos) P=2/3 R=1 -> .5*1 + .5*2/3 = 5/6
    assert auprc(SCORES, POSITIVES) == pytest.approx(5 / 6)
    # one threshold for all-tied scores: P = 1/4 at R = 1
    assert auprc(np.ones(4), np.array([0, 1, 0, 0])) == pytest.approx(0.25)
    assert auprc(SCORES, np.zeros(4)) is None


def test_surface_band_uses_the_voxel_spacing():
    reference = np.zeros((20, 3), bool)
    reference[5:15] = True
    # 2 mm voxels along axis 0: inside, voxel 5 is 2 mm from background (voxel 4), voxel 6 is 4 mm;
    # outside, voxel 4 is 2 mm from the reference, voxel 3 is 4 mm -> band of 4 mm = 3..6 and 13..16
    band = surface_band(reference, spacing=(2.0, 100.0), band_mm=4.0)
    assert np.flatnonzero(band[:, 1]).tolist() == [3, 4, 5, 6, 13, 14, 15, 16]
    with pytest.raises(ValueError, match="spacing"):
        surface_band(reference, spacing=(1.0,))
    with pytest.raises(ValueError, match="no surface"):
        surface_band(np.zeros((4, 4), bool), spacing=(1.0, 1.0))


def test_reliability_bins_and_ece():
    prob = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    truth = np.array([0, 1, 0, 1, 1])
    table = reliability(prob, truth, bins=10)
    # bin 0: p .05, rate 0; bin 1: p .15, rate .5; bin 9: p (.95+1)/2 = .975, rate 1 (p = 1 lands in the last bin)
    assert table["count"] == [1, 1 + 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table["mean_probability"][1] == pytest.approx(0.15)
    assert table["observed_rate"][1] == pytest.approx(0.5)
    assert table["observed_rate"][2] is None
    # ECE = (1 * .05 + 2 * .35 + 2 * .025) / 5 = .16
    assert table["ece"] == pytest.approx(0.16)


def test_brier_and_nll():
    prob = np.array([0.05, 0.15, 0.15, 0.95])
    truth = np.array([0, 1, 0, 1])
    # (.05^2 + .85^2 + .15^2 + .05^2) / 4 = .75 / 4
    assert brier(prob, truth) == pytest.approx(0.1875)
    # -(ln .5 + ln(1 - .9)) / 2
    assert nll(np.array([0.5, 0.9]), np.array([1, 0])) == pytest.approx((math.log(2) + math.log(10)) / 2)
    assert math.isfinite(nll(np.array([0.0, 1.0]), np.array([1, 0])))  # clipped, not infinite


def test_foreground_region_is_the_union():
    assert foreground_region(np.array([1, 0, 0, 2]), np.array([0, 1, 0, 0])).tolist() == [True, True, False, True]


def test_member_diversity():
    a, b, c = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]), np.zeros(4)
    # Dice(a, b) = 2 * 1 / 3, Dice(a, c) = Dice(b, c) = 0 -> mean 2/9
    assert pairwise_dice([a, b, c]) == pytest.approx(2 / 9)
    assert pairwise_dice([a, a]) == pytest.approx(1.0)
    # reference y = [0, 0, 1, 1]: d(a, y) = d(b, y) = 1, d(a, b) = 1/3 -> 2 * 1 - 1/3
    assert generalised_energy_distance([a, b], np.array([0, 0, 1, 1])) == pytest.approx(5 / 3)
    # members equal to the reference: distance 0
    assert generalised_energy_distance([a, a], a) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 members"):
        pairwise_dice([a])


def test_entropy_decomposition_splits_disagreement_from_softness():
    # voxel 0: members (1, 0) and (0, 1) disagree fully: H(mean) = ln 2, expected H = 0
    # voxel 1: both members (.5, .5): H(mean) = ln 2 = expected H, no disagreement
    members = np.array([[[1.0, 0.5], [0.0, 0.5]], [[0.0, 0.5], [1.0, 0.5]]])  # (N=2, K=2, voxels=2)
    out = entropy_decomposition(members)
    assert out["total"] == pytest.approx(2 * math.log(2))
    assert out["expected"] == pytest.approx(math.log(2))
    assert out["disagreement_fraction"] == pytest.approx(0.5)
    only_first = entropy_decomposition(members, region=np.array([True, False]))
    assert only_first["disagreement_fraction"] == pytest.approx(1.0)
    certain = np.array([[[1.0], [0.0]], [[1.0], [0.0]]])
    assert entropy_decomposition(certain)["disagreement_fraction"] is None
