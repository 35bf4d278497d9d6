"""Guidance channels: the marks as image channels of a guided network, and the simulated clicks it trains on."""

import numpy as np
import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig, SegDiffusionPrepareBatch, make_scheduler
from medsegdiff.guidance import ErrorClicks, ErrorClicksPrepareBatch, SimulatedClicksd, guidance_maps, largest_error_click
from medsegdiff.interaction import UNKNOWN, KnownRegion
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.training import train_on_arrays

DIFFUSION = DiffusionConfig(num_train_timesteps=10, prediction_type="sample")


def guided(guidance_channels=2):
    torch.manual_seed(0)
    return MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                          num_head_channels=8, guidance_channels=guidance_channels).eval()


class StemInputs:
    """Records what the image stem of a network receives (a forward pre-hook on the real network)."""

    def __init__(self, network):
        self.seen = []
        network.image_stem.register_forward_pre_hook(lambda module, args: self.seen.append(args[0].detach().clone()))


def test_guidance_maps_channels():
    labels = torch.full((1, 1, 4, 4), UNKNOWN)
    labels[0, 0, 1, 1], labels[0, 0, 2, 3], labels[0, 0, 0, 0] = 1, 0, 2
    maps = guidance_maps(KnownRegion(labels), torch.zeros(1, 1, 4, 4))
    assert maps.shape == (1, 2, 4, 4)
    assert maps[0, 0].nonzero().tolist() == [[0, 0], [1, 1]]  # any foreground class
    assert maps[0, 1].nonzero().tolist() == [[2, 3]]
    assert not guidance_maps(None, torch.zeros(2, 1, 4, 4)).any()
    with pytest.raises(ValueError, match="marks of shape"):
        guidance_maps(KnownRegion(labels), torch.zeros(1, 1, 4, 5))


def test_network_switch_validated_and_stored():
    net = guided()
    assert net.image_channels == 3 and net.config["guidance_channels"] == 2
    with pytest.raises(ValueError, match="guidance_channels must be 0 or 2"):
        guided(1)


def test_sampler_feeds_the_marks_to_a_guided_network():
    net = guided()
    stem = StemInputs(net)
    image = torch.randn(1, 1, 16, 16)
    labels = torch.full((1, 1, 16, 16), UNKNOWN)
    labels[0, 0, 4, 4], labels[0, 0, 10, 12] = 1, 0
    sampler = EnsembleSampler(DIFFUSION, "ddim", 2, 2)
    sampler(net, image, known=KnownRegion(labels))
    sampler(net, image)
    with_marks, without = stem.seen
    assert torch.equal(with_marks[:, :1], image) and torch.equal(without[:, :1], image)
    assert with_marks[0, 1].nonzero().tolist() == [[4, 4]] and with_marks[0, 2].nonzero().tolist() == [[10, 12]]
    assert not without[:, 1:].any()


def _square(size=24):
    label = np.zeros((1, size, size), np.float32)
    label[0, 6:16, 8:18] = 1
    image = np.random.default_rng(0).uniform(0.3, 1.0, (1, size, size)).astype(np.float32)
    return image, label


def test_simulated_clicks_agree_with_the_label():
    image, label = _square()
    clicks = SimulatedClicksd(max_clicks=3, radius=1, prob_none=0.0)
    clicks.set_random_state(seed=3)
    fg_seen = bg_seen = 0
    for _ in range(20):
        out = clicks({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
        assert out["image"].shape == (3, 24, 24) and torch.equal(out["image"][0], torch.from_numpy(image[0]))
        fg, bg = out["image"][1].bool().numpy(), out["image"][2].bool().numpy()
        assert fg.any() and bg.any()  # prob_none 0: at least one click of each kind
        assert label[0][fg].min() == 1 and label[0][bg].max() == 0  # every marked voxel has the marked class
        fg_seen, bg_seen = fg_seen + fg.sum(), bg_seen + bg.sum()
    assert fg_seen > 20 and bg_seen > 20
    none = SimulatedClicksd(prob_none=1.0)({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    assert none["image"].shape == (3, 24, 24) and not none["image"][1:].any()
    with pytest.raises(ValueError, match="max_clicks"):
        SimulatedClicksd(max_clicks=0)


def test_training_a_guided_network_sees_simulated_clicks():
    torch.manual_seed(0)
    net = MedSegDiffUNet(2, 1, 1, (24, 24), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                         num_head_channels=8, guidance_channels=2)
    stem = StemInputs(net)
    image, label = _square()
    images, labels = np.repeat(image[None], 4, 0), np.repeat(label[None], 4, 0)
    train_on_arrays(net, DIFFUSION, images, labels, iterations=6, batch_size=4, augment=False, log_every=0)
    batches = torch.cat(stem.seen)
    assert batches.shape[1] == 3
    assert batches[:, 1].any() and batches[:, 2].any()  # clicks of both kinds reached the network
    assert (batches[:, 1:].flatten(1).sum(1) == 0).any()  # and samples without any click (the automatic case)


def test_train_task_samples_carry_simulated_clicks():
    from medsegdiff.transforms import sample_transforms

    label = np.zeros((1, 24, 24, 6), np.float32)
    label[0, 6:16, 8:18, :] = 1
    image = np.random.default_rng(1).uniform(0.3, 1.0, (1, 24, 24, 6)).astype(np.float32)
    transform = sample_transforms((24, 24), 2, 2, guidance=True)
    transform.set_random_state(seed=0)
    samples = [transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)}) for _ in range(12)]
    samples = [s[0] if isinstance(s, list) else s for s in samples]
    assert all(s["image"].shape == (3, 24, 24) for s in samples)
    clicked = [s for s in samples if s["image"][1:].any()]
    assert 0 < len(clicked) < len(samples)  # some samples with clicks, some without
    for s in clicked:
        fg = s["image"][1].bool()
        assert (s["label"][0][fg] == 1).all()  # marks follow the augmented label
    plain = sample_transforms((24, 24), 2, 2)({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    assert (plain[0] if isinstance(plain, list) else plain)["image"].shape == (1, 24, 24)


def test_largest_error_click_is_the_centre_of_the_largest_error_with_its_class():
    reference = np.zeros((12, 12, 3), np.uint8)
    reference[1:10, 1:10, 1] = 2  # a 9 x 9 square of class 2 the prediction misses ...
    prediction = np.zeros_like(reference)
    prediction[11, 11, 0] = 1  # ... and a one-voxel false positive
    assert largest_error_click(prediction, reference) == ((5, 5, 1), 2)
    prediction = reference.copy()
    prediction[0:12, 0:12, 2] = 1  # now the largest error is a false-positive slice
    voxel, value = largest_error_click(prediction, reference)
    assert value == 0 and voxel[2] == 2 and voxel[:2] in [(5, 5), (5, 6), (6, 5), (6, 6)]
    assert largest_error_click(reference, reference) is None


def test_largest_error_click_counts_the_grid_border_as_a_boundary():
    reference = np.zeros((11, 11, 20), np.uint8)
    prediction = reference.copy()
    prediction[:, :, :9] = 1  # a false-positive slab on the bottom slices, cut by the grid's border (a neck)
    voxel, value = largest_error_click(prediction, reference)
    assert value == 0 and voxel == (5, 5, 4)  # inside the slab, not on its border slice z = 0


def test_error_clicks_replace_the_simulated_clicks_by_one_on_the_networks_own_error():
    net = guided()
    image, label = _square()
    images = torch.from_numpy(np.repeat(image[None], 4, 0)).float()[:, :, :16, :16]
    labels = torch.from_numpy(np.repeat(label[None], 4, 0)).float()[:, :, :16, :16]
    images = torch.cat([images, torch.zeros_like(images), torch.ones_like(images)], dim=1)  # a background mark everywhere
    batch = {"image": images, "label": labels}
    assert torch.equal(ErrorClicks(net, DIFFUSION, prob=0.0)(batch)["image"], images)

    out = ErrorClicks(net, DIFFUSION, prob=1.0, radius=0, seed=3)(batch)["image"]
    assert not torch.equal(out, images)
    twin = ErrorClicks(net, DIFFUSION, prob=1.0, radius=0, seed=3)
    torch.rand(4, generator=twin.generator)  # the draw that chose the samples
    automatic = twin.automatic_labels(images)[:, 0]
    assert torch.equal(out[:, 0], images[:, 0])  # the image channel is untouched
    for i in range(4):
        errors = automatic[i] != labels[i, 0].long()
        marked = out[i, 1:].bool()
        if not errors.any():
            assert not marked.any()
            continue
        assert int(marked.sum()) == 1  # one click of radius 0 replaces the simulated marks
        channel, *voxel = torch.nonzero(marked)[0].tolist()
        assert errors[tuple(voxel)]  # on a voxel the automatic label gets wrong ...
        assert channel == (0 if labels[i, 0][tuple(voxel)] == 1 else 1)  # ... marked with the reference's class


def test_the_train_tasks_prepare_batch_gets_the_error_clicks():
    net = guided()
    image, label = _square(16)
    batch = {"image": torch.from_numpy(np.repeat(np.concatenate([image, 0 * image, 0 * image])[None], 2, 0)),
             "label": torch.from_numpy(np.repeat(label[None], 2, 0))}
    prepare = SegDiffusionPrepareBatch(make_scheduler(DIFFUSION, "ddpm"), 1, "sample")
    clicked = ErrorClicks(net, DIFFUSION, prob=1.0, seed=5)(batch)["image"]
    assert clicked[:, 1:].any()
    _, _, _, kwargs = ErrorClicksPrepareBatch(ErrorClicks(net, DIFFUSION, prob=1.0, seed=5), prepare)(batch)
    assert torch.equal(kwargs["condition"], clicked.float())
