"""Interactive correction in the sampler: marks become known voxels the diffusion chains keep (RePaint-style)."""

import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.interaction import UNKNOWN, KnownRegion, click_balls, keep_changes_near_marks, marks_to_labels
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler

DIFFUSION = DiffusionConfig(num_train_timesteps=10, prediction_type="sample")


def tiny(spatial_dims=2, size=(16, 16), num_classes=1, background_channel=False):
    torch.manual_seed(0)
    return MedSegDiffUNet(
        spatial_dims, 1, num_classes, size, channels=(8, 16), attention_levels=(False, False),
        norm_num_groups=4, num_head_channels=8, background_channel=background_channel,
    ).eval()


def test_click_balls_radius():
    mask = click_balls((5, 7), [[2, 3]], radius=1)
    assert mask.sum() == 5  # the voxel and its 4 neighbours
    assert mask[1, 3] and mask[2, 4] and not mask[1, 4]
    ball = click_balls((5, 7, 5), [[2, 3, 1]], radius=2)
    assert [int(ball[:, :, k].sum()) for k in range(5)] == [9, 13, 9, 1, 0]  # cross-sections of radius √3, 2, √3, 0, none
    with pytest.raises(ValueError, match="outside"):
        click_balls((5, 5), [[2, 5]], radius=1)
    with pytest.raises(ValueError, match="outside"):
        click_balls((5, 5), [[2, 2, 0]], radius=1)


def test_a_click_changes_the_label_only_as_it_asks_and_where_its_change_reaches():
    """Of a re-sampled result, the new foreground touching a new foreground mark is kept; a distant flip, and
    foreground taken away next to that mark, are not; taking a mark away (undo) lets its neighbourhood revert."""
    previous = {"probs": torch.full((1, 1, 12, 12), 0.2), "entropy": torch.full((1, 1, 12, 12), 0.3)}
    previous["probs"][0, 0, 0, 0:3] = 0.9  # foreground next to the click, which the re-sampling takes away
    probs = torch.full((1, 1, 12, 12), 0.2)
    probs[0, 0, 2:5, 2:7] = 0.9  # grows from the click at (1, 1): 8-connected to its neighbourhood
    probs[0, 0, 9:11, 9:11] = 0.8  # a distant flip of the same re-sampled slice
    probs[0, 0, 7, 2] = 0.3  # a softer probability without a new label, away from the click
    outputs = {"probs": probs, "entropy": torch.full((1, 1, 12, 12), 0.5)}
    marks = torch.full((1, 1, 12, 12), UNKNOWN)
    marks[0, 0, 1, 1] = 1
    changed = marks != UNKNOWN
    kept = keep_changes_near_marks(outputs, previous, marks, changed)
    assert torch.equal(kept["probs"][0, 0, 2:5, 2:7], probs[0, 0, 2:5, 2:7])
    assert torch.equal(kept["entropy"][0, 0, 2:5, 2:7], torch.full((3, 5), 0.5))
    assert kept["probs"][0, 0, 1, 1] == 0.2 and kept["entropy"][0, 0, 1, 1] == 0.5  # the mark itself: re-sampled
    assert torch.equal(kept["probs"][0, 0, 0, 0:3], torch.full((3,), 0.9))  # a foreground click removes nothing
    assert torch.equal(kept["probs"][0, 0, 9:11, 9:11], torch.full((2, 2), 0.2))
    assert kept["probs"][0, 0, 7, 2] == 0.2 and kept["entropy"][0, 0, 10, 10] == 0.3

    undone = keep_changes_near_marks(outputs, previous, torch.full_like(marks, UNKNOWN), changed)
    assert torch.equal(undone["probs"][0, 0, 0, 0:3], torch.full((3,), 0.2))  # reverts next to the mark taken away
    assert torch.equal(undone["probs"][0, 0, 2:5, 2:7], probs[0, 0, 2:5, 2:7])
    assert torch.equal(undone["probs"][0, 0, 9:11, 9:11], torch.full((2, 2), 0.2))
    with pytest.raises(ValueError, match="changed must be"):
        keep_changes_near_marks(outputs, previous, marks, changed[0])


def test_marks_to_labels_scribbles_win_over_discs():
    scribble_bg = torch.zeros(6, 6, dtype=torch.bool)
    scribble_bg[2, 2] = True
    labels = marks_to_labels((6, 6), foreground=[[2, 2]], radius=1, scribble_background=scribble_bg, foreground_class=2)
    assert labels.shape == (1, 6, 6)
    assert labels[0, 2, 2] == 0 and labels[0, 2, 3] == 2 and labels[0, 1, 2] == 2
    assert labels[0, 0, 0] == UNKNOWN and (labels != UNKNOWN).sum() == 5


def _marks(batch, size, points):
    labels = torch.full((batch, 1, *size), UNKNOWN, dtype=torch.long)
    for b, value, index in points:
        labels[(b, 0, *index)] = value
    return KnownRegion(labels)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_no_marks_is_plain_sampling(sampler, eta):
    net = tiny()
    ens = EnsembleSampler(DIFFUSION, sampler=sampler, num_inference_steps=3, num_ensemble=2, eta=eta)
    image = torch.randn(2, 1, 16, 16)
    plain = ens(net, image, seed=4)
    empty = ens(net, image, seed=4, known=_marks(2, (16, 16), []))
    assert torch.equal(plain.member_probs, empty.member_probs) and torch.equal(plain.label, empty.label)
    assert torch.equal(plain.entropy, empty.entropy)


@pytest.mark.parametrize("fusion", ["mean", "vote", "staple"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_marked_voxels_carry_the_marked_class(fusion, sampler):
    net = tiny(num_classes=2)
    ens = EnsembleSampler(DIFFUSION, sampler=sampler, num_inference_steps=3, num_ensemble=3, fusion=fusion)
    image = torch.randn(2, 1, 16, 16)
    plain = ens(net, image, seed=1)
    # mark every voxel with a class the plain result does not give it
    wanted = (plain.label + 1) % 3
    marked = torch.zeros_like(wanted, dtype=torch.bool)
    marked[:, :, 3:8, 4:12] = True
    known = KnownRegion(torch.where(marked, wanted, torch.full_like(wanted, UNKNOWN)))
    out = ens(net, image, seed=1, known=known)
    assert torch.equal(out.label[marked], wanted[marked])
    onehot = torch.stack([(wanted == c + 1).float() for c in range(2)], dim=1)[:, :, 0]
    for c in range(2):
        assert torch.equal(out.probs[:, c : c + 1][marked], onehot[:, c : c + 1][marked])
    assert float(out.entropy[marked].max()) < 1e-3


def test_marks_change_the_unmarked_neighbourhood():
    """The chains see the marks at every step: unmarked voxels adapt too (not a painted disc)."""
    net = tiny()
    ens = EnsembleSampler(DIFFUSION, num_inference_steps=4, num_ensemble=2)
    image = torch.randn(1, 1, 16, 16)
    plain = ens(net, image, seed=0)
    marked = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    marked[..., 6:10, 6:10] = True
    known = KnownRegion(torch.where(marked, 1 - plain.label, torch.full_like(plain.label, UNKNOWN)))
    out = ens(net, image, seed=0, known=known)
    assert (out.member_probs - plain.member_probs)[:, ~marked.expand_as(plain.probs)].abs().max() > 1e-3


def test_background_channel_network_respects_marks():
    net = tiny(background_channel=True)
    ens = EnsembleSampler(DIFFUSION, num_inference_steps=2, num_ensemble=2)
    image = torch.randn(1, 1, 16, 16)
    known = _marks(1, (16, 16), [(0, 1, (3, 3)), (0, 0, (8, 8))])
    out = ens(net, image, seed=0, known=known)
    assert out.label[0, 0, 3, 3] == 1 and out.label[0, 0, 8, 8] == 0
    assert out.probs[0, 0, 3, 3] == 1 and out.probs[0, 0, 8, 8] == 0


def test_inferer_resamples_only_marked_slices():
    """Re-sampling the marked slices of a plain result equals a full run with the marks (same seed; labels exactly,
    probabilities to float rounding: the re-sampled slices are batched otherwise)."""
    net = tiny()
    ens = EnsembleSampler(DIFFUSION, num_inference_steps=2, num_ensemble=2)
    inferer = MedSegDiffInferer(ens, seed=3, slice_axis=2, slice_batch_size=2)
    volume = torch.randn(1, 1, 16, 16, 5)
    plain = inferer(volume, net)
    labels = torch.full((1, 1, 16, 16, 5), UNKNOWN, dtype=torch.long)
    labels[0, 0, 4:7, 4:7, 3] = 1 - plain["label"][0, 0, 4:7, 4:7, 3]
    known = KnownRegion(labels)
    full = inferer(volume, net, known=known)
    plain_nfe = inferer.nfe
    partial = inferer(volume, net, known=known, previous=plain, slices=[3])
    assert inferer.nfe * 3 == plain_nfe  # one batch (slice 3) of the full run's (0, 1), (2, 3), (4,)
    assert torch.equal(partial["label"], full["label"])
    for key in ("probs", "entropy", "variance"):
        torch.testing.assert_close(partial[key], full[key], atol=1e-5, rtol=0, msg=key)
    assert not torch.equal(full["label"][..., 3], plain["label"][..., 3])
    assert torch.equal(full["label"][..., :3], plain["label"][..., :3])
    with pytest.raises(ValueError, match="previous and slices"):
        inferer(volume, net, slices=[3])


def test_inferer_3d_windows_respect_marks():
    net = tiny(spatial_dims=3, size=(8, 8, 8))
    ens = EnsembleSampler(DIFFUSION, num_inference_steps=2, num_ensemble=2)
    inferer = MedSegDiffInferer(ens, seed=0, roi_size=(8, 8, 8), overlap=0.5)
    volume = torch.randn(1, 1, 12, 8, 8)
    plain = inferer(volume, net)
    labels = torch.full((1, 1, 12, 8, 8), UNKNOWN, dtype=torch.long)
    labels[0, 0, 5:7, 3:5, 3:5] = 1 - plain["label"][0, 0, 5:7, 3:5, 3:5]
    out = inferer(volume, net, known=KnownRegion(labels))
    marked = labels != UNKNOWN
    assert torch.equal(out["label"][marked], labels[marked])
    assert torch.equal(inferer(volume, net, known=KnownRegion(torch.full_like(labels, UNKNOWN)))["probs"], plain["probs"])
