"""Click hints: a click's disc on the slices beyond its ball, read by a guided 2D network and never forced."""

import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.guidance import guidance_maps
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.interaction import UNKNOWN, KnownRegion, click_balls, click_reach_hints
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler

DIFFUSION = DiffusionConfig(num_train_timesteps=10, prediction_type="sample")


def guided():
    torch.manual_seed(0)
    return MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                          num_head_channels=8, guidance_channels=2).eval()


def test_hints_sit_on_the_slices_beyond_the_ball():
    hints = click_reach_hints((7, 7, 12), [((3, 3, 4), 1)], radius=2, reach=3, slice_axis=2)
    assert hints.shape == (1, 7, 7, 12)
    hinted = [k for k in range(12) if (hints[0, :, :, k] != UNKNOWN).any()]
    assert hinted == [0, 1, 7, 8, 9]  # the ball covers 2..6; 3 slices on each side, the lower side clipped at 0
    disc = hints[0, :, :, 8] == 1  # radius 2 - 1 = 1: the centre and its 4 neighbours
    assert disc.sum() == 5 and disc[3, 3] and disc[2, 3] and disc[3, 4] and not disc[2, 2]
    assert torch.equal(hints[0, :, :, 0] != UNKNOWN, disc)
    # along another axis, a background click; a later click overwrites an earlier one where they overlap
    hints = click_reach_hints((12, 7, 7), [((5, 3, 3), 1), ((6, 3, 3), 0)], radius=1, reach=1, slice_axis=0)
    assert [i for i in range(12) if (hints[0, i] != UNKNOWN).any()] == [3, 4, 7, 8]
    assert int(hints[0, 4, 3, 3]) == 0 and int(hints[0, 3, 3, 3]) == 1  # 4 is the second click's, 3 the first's
    assert (click_reach_hints((7, 7, 12), [((3, 3, 4), 1)], 2, 0, 2) == UNKNOWN).all()


def test_hints_follow_the_error_of_the_label_the_click_corrects():
    label = torch.zeros(7, 7, 12, dtype=torch.long)
    label[3, 3, 8] = 1  # at the click's in-plane position the label says foreground on slice 8: the error ends there
    label[0, 0, :] = 1  # elsewhere in the plane: no matter
    hints = click_reach_hints((7, 7, 12), [((3, 3, 4), 1)], radius=2, reach=3, slice_axis=2, label=label)
    assert [k for k in range(12) if (hints[0, :, :, k] != UNKNOWN).any()] == [0, 1, 7]
    label[3, 3, 7] = 1  # a false positive on slices 7-8 beyond a background click's ball: hinted there, no further
    background = click_reach_hints((7, 7, 12), [((3, 3, 4), 0)], radius=2, reach=3, slice_axis=2, label=label)
    assert [k for k in range(12) if (background[0, :, :, k] != UNKNOWN).any()] == [7, 8]
    with pytest.raises(ValueError, match="label of shape"):
        click_reach_hints((7, 7, 12), [], 2, 3, 2, label=label[..., :5])
    with pytest.raises(ValueError, match="reach and radius"):
        click_reach_hints((7, 7, 12), [], 2, -1, 2)


def test_a_guided_network_reads_hints_where_unmarked_and_marks_win():
    labels = torch.full((1, 1, 4, 4), UNKNOWN)
    hints = labels.clone()
    labels[0, 0, 1, 1] = 0
    hints[0, 0, 1, 1], hints[0, 0, 2, 2], hints[0, 0, 3, 0] = 1, 1, 0
    maps = guidance_maps(KnownRegion(labels, hints), torch.zeros(1, 1, 4, 4))
    assert maps[0, 0].nonzero().tolist() == [[2, 2]]
    assert maps[0, 1].nonzero().tolist() == [[1, 1], [3, 0]]  # the mark over the hint at [1, 1]
    with pytest.raises(ValueError, match="hints of shape"):
        KnownRegion(labels, hints[..., :3])


def test_hints_are_read_on_their_own_slice_and_never_forced():
    net = guided()
    volume = torch.randn(1, 1, 16, 16, 6)
    marks = torch.full((1, 1, 16, 16, 6), UNKNOWN)
    marks[0, 0][click_balls((16, 16, 6), [[8, 8, 1]], 1)] = 1
    hints = click_reach_hints((16, 16, 6), [((8, 8, 1), 1)], radius=1, reach=2, slice_axis=2)[None]  # slices 3, 4
    inferer = MedSegDiffInferer(EnsembleSampler(DIFFUSION, "ddim", 2, 2), seed=3, slice_axis=2, slice_batch_size=4)
    plain = inferer(volume, net, known=KnownRegion(marks))
    hinted = inferer(volume, net, known=KnownRegion(marks, hints))
    for k in range(6):  # hints change their own slices only, whatever the slice batches
        same = torch.equal(plain["probs"][..., k], hinted["probs"][..., k])
        assert same == (k not in (3, 4)), k
    # a hint is guidance only: its voxels keep the network's probabilities, not a forced one-hot
    at_hints = hinted["probs"][0, 0][hints[0, 0] == 1]
    assert ((at_hints > 0.01) & (at_hints < 0.99)).any()
    assert (hinted["probs"][0, 0][marks[0, 0] == 1] == 1).all()  # the marks are forced
