"""The uncertainty shown with the boundary shifted a voxel both ways (a reference may end a voxel further in or out)."""

import numpy as np
import pytest
import torch

from medsegdiff.uncertainty import predictive_entropy, shown_uncertainty, widen_mask, with_boundary_shifts


def test_the_shifted_mean_averages_the_probability_its_neighbours_grow_and_shrink_to_in_2d():
    probs = torch.tensor([[0.0, 0.0, 0.9, 1.0, 1.0]]).reshape(1, 1, 1, 5)
    shifted = with_boundary_shifts(probs, 1)[0, 0, 0]
    # voxel 1: neighbours 0.0 / 0.0 / 0.9 → (min 0 + itself 0 + max 0.9) / 3; voxel 2: (0 + 0.9 + 1) / 3
    assert shifted.tolist() == pytest.approx([0.0, 0.3, 1.9 / 3, (0.9 + 1 + 1) / 3, 1.0])


def test_margin_two_reaches_two_voxels_in_3d_and_zero_changes_nothing():
    probs = torch.zeros(1, 1, 7, 7, 7)
    probs[0, 0, 3, 3, 3] = 0.9
    shifted = with_boundary_shifts(probs, 2)[0, 0]
    assert int((shifted > 0).sum()) == 125 and float(shifted[1, 1, 1]) == pytest.approx(0.3)
    assert torch.equal(with_boundary_shifts(probs, 0), probs)


def test_a_certain_voxel_next_to_the_boundary_becomes_uncertain_and_a_flag_stays_at_the_maximum():
    probs = torch.tensor([0.0, 0.0, 0.0, 0.55, 1.0, 1.0]).reshape(1, 1, 1, 6)
    entropy = predictive_entropy(probs)
    entropy[0, 0, 0, 0] = 1.0  # a click's flag on a voxel the ensemble is sure of
    shown = shown_uncertainty(probs, entropy, 1)[0, 0, 0]
    assert float(shown[0]) == 1.0  # the flag
    assert float(entropy[0, 0, 0, 2]) == 0.0 and float(shown[2]) > 0.5  # the voxel outside the boundary
    assert float(shown[1]) == 0.0  # two voxels out: as certain as before
    assert torch.equal(shown_uncertainty(probs, entropy, 0), entropy)


def test_a_changed_voxel_reaches_the_voxels_within_the_margin():
    changed = torch.zeros(5, 5, dtype=torch.bool)
    changed[0, 0] = True
    assert widen_mask(changed, 1).nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize("margin, shape, message", [(-1, (1, 1, 4, 4), "margin"), (1, (4, 4), r"\(B, C, H, W\)")])
def test_bad_margin_or_shape_is_refused_by_name(margin, shape, message):
    with pytest.raises(ValueError, match=message):
        with_boundary_shifts(torch.zeros(shape), margin)


def test_painted_ball_scores_the_shifted_map_finding_a_missed_rim_the_raw_map_misses():
    from bench.interactive import painted_ball

    grid = np.indices((24, 24, 24)) - 12
    distance = np.sqrt((grid ** 2).sum(axis=0))
    reference, auto = (distance <= 7).astype(np.uint8), (distance <= 6).astype(np.uint8)  # a missed one-voxel rim
    entropy = ((distance > 5) & (distance <= 6)).astype(np.float32)  # uncertain on its own boundary only
    shown = ((distance > 5) & (distance <= 7)).astype(np.float32)  # ... and a voxel further out
    band = (distance > 3) & (distance <= 10)
    scores = painted_ball(auto, reference, 1, entropy, band, shown)
    assert scores["uncertainty_auroc_after_shifted"] > scores["uncertainty_auroc_after"] + 0.2
    assert scores["uncertainty_auroc_after_6mm_shifted"] > scores["uncertainty_auroc_after_6mm"] + 0.2
