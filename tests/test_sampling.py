"""Diffusion objective, samplers, ensemble reproducibility, NFE accounting, fusion, uncertainty, inferer."""

import pytest
import torch

from medsegdiff.diffusion import (
    DiffusionConfig,
    SegDiffusionPrepareBatch,
    diffusion_loss,
    diffusion_to_probabilities,
    labels_to_diffusion_target,
    make_scheduler,
)
from medsegdiff.fusion import class_distribution, fuse, majority_vote, probabilities_to_labels, staple
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.uncertainty import member_variance, predictive_entropy

DIFFUSION = DiffusionConfig(num_train_timesteps=10, prediction_type="sample")


def tiny(spatial_dims=2, size=(16, 16), num_classes=1):
    torch.manual_seed(0)
    return MedSegDiffUNet(
        spatial_dims, 1, num_classes, size, channels=(8, 16), attention_levels=(False, True),
        norm_num_groups=4, num_head_channels=8,
    ).eval()


class ForwardCounter:
    """Counts real forward passes of a network with a forward hook (no mock)."""

    def __init__(self, net):
        self.calls, self.batch_sizes = 0, []
        net.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.batch_sizes.append(output.shape[0])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_targets_and_gradients(prediction_type):
    net = tiny()
    net.train()
    cfg = DiffusionConfig(num_train_timesteps=10, prediction_type=prediction_type)
    scheduler = make_scheduler(cfg, "ddpm")
    prepare = SegDiffusionPrepareBatch(scheduler, 1, prediction_type)
    batch = {"image": torch.randn(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    loss = diffusion_loss(net, scheduler, prepare, batch)
    loss.backward()
    assert loss.item() > 0
    assert net.mask_stem.weight.grad.abs().sum() > 0


def test_labels_to_diffusion_target_multiclass_and_range():
    labels = torch.tensor([[[[0, 1], [2, 3]]]])
    x0 = labels_to_diffusion_target(labels, 3)
    assert x0.shape == (1, 3, 2, 2)
    assert x0.min() == -1 and x0.max() == 1
    assert x0[0, :, 1, 1].tolist() == [-1, -1, 1]
    with pytest.raises(ValueError, match="0..1"):
        labels_to_diffusion_target(labels, 1)


@pytest.mark.parametrize("steps", [1, 3, 7])
@pytest.mark.parametrize("members", [1, 4])
def test_ddim_k_steps_makes_k_batched_calls(steps, members):
    net = tiny()
    counter = ForwardCounter(net)
    image = torch.randn(2, 1, 16, 16)
    result = EnsembleSampler(DIFFUSION, "ddim", steps, members)(net, image)
    assert counter.calls == steps == result.nfe
    assert counter.batch_sizes == [2 * members] * steps
    assert result.member_evaluations == steps * members


def test_sequential_members_make_n_times_k_calls_with_identical_result():
    net = tiny()
    image = torch.randn(1, 1, 16, 16)
    batched = EnsembleSampler(DIFFUSION, "ddim", 3, 4)(net, image, seed=5)
    counter = ForwardCounter(net)
    sequential = EnsembleSampler(DIFFUSION, "ddim", 3, 4, member_batch_size=1)(net, image, seed=5)
    assert counter.calls == 12 == sequential.nfe
    torch.testing.assert_close(batched.member_probs, sequential.member_probs, atol=1e-4, rtol=1e-3)


def test_ddpm_runs_full_chain():
    net = tiny()
    counter = ForwardCounter(net)
    result = EnsembleSampler(DIFFUSION, "ddpm", 10, 2)(net, torch.randn(1, 1, 16, 16))
    assert counter.calls == 10 == result.nfe


@pytest.mark.parametrize("sampler,steps", [("ddim", 3), ("ddpm", 10)])
def test_same_seed_same_ensemble_different_seed_different(sampler, steps):
    net = tiny()
    image = torch.randn(1, 1, 16, 16)
    s = EnsembleSampler(DIFFUSION, sampler, steps, 3)
    a, b, c = s(net, image, seed=1), s(net, image, seed=1), s(net, image, seed=2)
    torch.testing.assert_close(a.member_probs, b.member_probs)
    assert not torch.allclose(a.member_probs, c.member_probs)
    # members differ from each other (own generators)
    assert not torch.allclose(a.member_probs[0], a.member_probs[1])


def test_each_member_reproducible_on_its_own():
    net = tiny()
    image = torch.randn(1, 1, 16, 16)
    ensemble = EnsembleSampler(DIFFUSION, "ddpm", 10, 3)(net, image, seed=7)
    chunked = EnsembleSampler(DIFFUSION, "ddpm", 10, 3, member_batch_size=1)(net, image, seed=7)
    torch.testing.assert_close(ensemble.member_probs, chunked.member_probs, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 11}, "num_inference_steps"),
        ({"num_ensemble": 0}, "num_ensemble"),
        ({"sampler": "dpm"}, "sampler"),
        ({"fusion": "max"}, "fusion"),
        ({"member_batch_size": 0}, "member_batch_size"),
        ({"eta": -0.1}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"eta": "0.5"}, "eta"),
    ],
)
def test_bad_sampler_arguments_raise_naming_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EnsembleSampler(DIFFUSION, **kwargs)


def test_wrong_image_channels_raise():
    with pytest.raises(ValueError, match="3 channels"):
        EnsembleSampler(DIFFUSION, num_inference_steps=1, num_ensemble=1)(tiny(), torch.randn(1, 3, 16, 16))


def test_staple_converges_where_mean_vote_is_wrong():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4000, generator=g) > 0.6
    good = [truth.clone(), truth.clone()]
    # three unreliable raters flip 40 % of voxels each, independently
    bad = [truth ^ (torch.rand(4000, generator=g) < 0.4) for _ in range(3)]
    decisions = torch.stack(good + bad).float()
    mean_vote = decisions.mean(0) > 0.5
    assert (mean_vote != truth).float().mean() > 0.05  # the mean vote really is wrong on many voxels
    result = staple(decisions, max_iterations=200)
    assert result.converged and result.iterations > 1
    assert ((result.posterior > 0.5) != truth).float().mean() < 0.01
    assert result.sensitivity[:2].min() > 0.95 and result.sensitivity[2:].max() < 0.8


def test_fusions_on_member_probabilities():
    members = torch.tensor([0.9, 0.8, 0.2]).reshape(3, 1, 1, 1, 1).expand(3, 1, 1, 2, 2)
    torch.testing.assert_close(fuse(members, "mean"), torch.full((1, 1, 2, 2), 1.9 / 3))
    torch.testing.assert_close(majority_vote(members), torch.full((1, 1, 2, 2), 2 / 3))
    assert fuse(members, "staple").shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="fusion"):
        fuse(members, "max")


def test_multiclass_labels_and_uncertainty():
    probs = torch.tensor([[0.1, 0.1], [0.8, 0.1], [0.1, 0.7]]).T.reshape(1, 2, 3)  # 2 classes, 3 voxels
    assert probabilities_to_labels(probs).flatten().tolist() == [0, 1, 2]
    agree = torch.ones(4, 1, 1, 8, 8)
    disagree = torch.stack([torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)] * 2)
    assert predictive_entropy(agree.mean(0)).max() < 1e-6
    torch.testing.assert_close(predictive_entropy(disagree.mean(0)), torch.ones(1, 1, 8, 8))
    torch.testing.assert_close(member_variance(disagree), torch.full((1, 1, 8, 8), 0.25))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_volume_inferer_returns_probs_label_uncertainty(spatial_dims):
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    net = tiny(spatial_dims, size)
    sampler = EnsembleSampler(DIFFUSION, "ddim", 2, 2)
    volume = torch.randn(1, 1, 20, 18, 11)
    out = MedSegDiffInferer(sampler, slice_batch_size=4)(volume, net)
    for key in ("probs", "label", "entropy", "variance"):
        assert out[key].shape == (1, 1, 20, 18, 11), key
    assert set(out["label"].unique().tolist()) <= {0, 1}


def test_background_channel_keeps_a_small_class_that_one_minus_sum_drops():
    # p_csf 0.4, p_gm 0.1: without a background channel the background gets 1 - 0.5 and wins
    foreground_only = torch.tensor([0.4, 0.1]).reshape(1, 2, 1) * 2 - 1
    assert probabilities_to_labels(diffusion_to_probabilities(foreground_only)).item() == 0
    # the network's explicit background says 0.2: CSF is the argmax over all three
    with_background = torch.tensor([0.2, 0.4, 0.1]).reshape(1, 3, 1) * 2 - 1
    probs = diffusion_to_probabilities(with_background, background=True)
    assert probs.shape == (1, 2, 1)
    assert probabilities_to_labels(probs).item() == 1
    torch.testing.assert_close(probs.flatten(), torch.tensor([0.4, 0.1]) / 0.7, atol=1e-4, rtol=0)
    target = labels_to_diffusion_target(torch.tensor([[[0, 2]]]), 2, background=True)
    assert target[0, :, 0].tolist() == [1, -1, -1] and target[0, :, 1].tolist() == [-1, -1, 1]


def test_one_class_labels_equal_the_argmax_of_the_two_class_distribution():
    # around 0.5 in float32 steps, the ends, and values a resampling can overshoot to
    edge = torch.tensor([0.5, 0.0, 1.0, 1.5, -0.25, 1e-8])
    steps = torch.arange(-32, 32, dtype=torch.float32)
    around = torch.tensor(0.5) + steps * torch.finfo(torch.float32).eps / 2
    probs = torch.cat([edge, around, torch.rand(1000, generator=torch.Generator().manual_seed(0))]).reshape(1, 1, -1)
    dist = class_distribution(probs)
    expected = dist.argmax(dim=1, keepdim=True)
    assert torch.equal(probabilities_to_labels(probs), expected)
    assert probabilities_to_labels(probs).dtype == torch.long
