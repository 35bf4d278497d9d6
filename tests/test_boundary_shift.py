"""``RandBoundaryShiftd``: the label's boundary moves one voxel out or in, never anything else."""

from collections import Counter

import pytest
import torch

from medsegdiff.training import RandBoundaryShiftd


def _square() -> torch.Tensor:
    label = torch.zeros(1, 9, 9)
    label[0, 3:6, 3:6] = 1  # 3 x 3 = 9 voxels
    return label


def test_the_boundary_moves_one_voxel_out_or_in_about_equally_often():
    shift = RandBoundaryShiftd(prob=1.0)
    shift.set_random_state(0)
    outcomes = Counter()
    for _ in range(200):
        out = shift({"label": _square(), "image": torch.ones(1, 9, 9)})
        assert torch.equal(out["image"], torch.ones(1, 9, 9))  # only the label moves
        outcomes[int(out["label"].sum())] += 1
    assert set(outcomes) == {25, 1}  # dilated to 5 x 5 or eroded to the centre voxel
    assert 70 < outcomes[25] < 130


def test_a_dilated_square_is_the_square_one_voxel_wider():
    shift = RandBoundaryShiftd(prob=1.0)
    shift.set_random_state(0)
    wider = torch.zeros(1, 9, 9)
    wider[0, 2:7, 2:7] = 1
    seen = [shift({"label": _square()})["label"] for _ in range(20)]
    assert any(torch.equal(s, wider) for s in seen)
    centre = torch.zeros(1, 9, 9)
    centre[0, 4, 4] = 1
    assert all(torch.equal(s, wider) or torch.equal(s, centre) for s in seen)


def test_default_probability_leaves_a_third_unchanged():
    shift = RandBoundaryShiftd()
    shift.set_random_state(1)
    sums = Counter(int(shift({"label": _square()})["label"].sum()) for _ in range(300))
    assert set(sums) == {25, 9, 1}
    assert 70 < sums[9] < 130


def test_a_multi_class_label_is_refused_naming_the_key():
    label = _square()
    label[0, 0, 0] = 2
    with pytest.raises(ValueError, match="'label'"):
        RandBoundaryShiftd(prob=1.0)({"label": label})
