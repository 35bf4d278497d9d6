"""Widening the uncertainty to the neighbours a reference boundary drawn a voxel away may reach."""

import pytest
import torch

from medsegdiff.uncertainty import widen_to_neighbours


def test_one_uncertain_voxel_covers_its_cube_of_neighbours_in_3d():
    u = torch.zeros(1, 1, 7, 7, 7)
    u[0, 0, 3, 3, 3] = 0.8
    widened = widen_to_neighbours(u, 1)[0, 0]
    assert set(map(tuple, widened.nonzero().tolist())) == {(x, y, z) for x in (2, 3, 4) for y in (2, 3, 4) for z in (2, 3, 4)}
    assert float(widened.max()) == pytest.approx(0.8)


def test_the_largest_neighbour_wins_and_the_edge_keeps_its_size_in_2d():
    u = torch.zeros(1, 1, 4, 5)
    u[0, 0, 0, 0], u[0, 0, 0, 2] = 0.3, 0.9
    widened = widen_to_neighbours(u, 1)
    assert widened.shape == u.shape
    assert widened[0, 0, 1, 1] == pytest.approx(0.9)  # neighbour of both: the larger
    assert widened[0, 0, 1, 0] == pytest.approx(0.3)
    assert widened[0, 0, 2, 2] == 0.0  # two rows away from both


def test_margin_two_reaches_two_voxels_and_zero_changes_nothing():
    u = torch.zeros(1, 1, 9, 9)
    u[0, 0, 4, 4] = 1.0
    assert int(widen_to_neighbours(u, 2).sum()) == 25
    assert torch.equal(widen_to_neighbours(u, 0), u)


@pytest.mark.parametrize("margin, shape, message", [(-1, (1, 1, 4, 4), "margin"), (1, (4, 4), "(B, 1, H, W)")])
def test_bad_margin_or_shape_is_refused_by_name(margin, shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        widen_to_neighbours(torch.zeros(shape), margin)
