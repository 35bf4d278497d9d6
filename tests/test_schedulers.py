"""Respaced DDPM and DDIM over any k, checked against hand-computed coefficients; batching-invariant noise."""

import math

import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.inferer import MedSegDiffInferer, slice_stack
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.schedulers import RespacedScheduler, sampling_timesteps

T1000 = DiffusionConfig(num_train_timesteps=1000, schedule="linear_beta", prediction_type="sample")


def linear_alpha_bar(t: int) -> float:
    """ᾱ_t of MONAI's linear_beta schedule (betas linspace 1e-4..2e-2 over 1000 steps), computed by hand."""
    betas = [1e-4 + (2e-2 - 1e-4) * i / 999 for i in range(1000)]
    return math.prod(1 - b for b in betas[: t + 1])


@pytest.mark.parametrize("k", [600, 300, 7, 10, 1000])
def test_ddim_any_k_starts_at_pure_noise_and_ends_at_the_lowest_step(k):
    steps = sampling_timesteps(1000, k).tolist()
    assert len(steps) == k == len(set(steps))
    assert steps[0] == 999 and steps[-1] == 0
    assert steps == sorted(steps, reverse=True)


def test_one_step_predicts_x0_from_pure_noise():
    assert sampling_timesteps(1000, 1).tolist() == [999]
    scheduler = RespacedScheduler(T1000, "ddim", 1)
    out = torch.full((1, 1, 2, 2), 0.3)
    x_prev, x0 = scheduler.step(out, 0, torch.randn(1, 1, 2, 2))
    torch.testing.assert_close(x_prev, out)


def test_respaced_ddpm_coefficients_match_hand_computation():
    scheduler = RespacedScheduler(T1000, "ddpm", 10)
    assert scheduler.timesteps.tolist()[:2] == [999, 888]
    a_t, a_prev = linear_alpha_bar(999), linear_alpha_bar(888)
    beta = 1 - a_t / a_prev  # the respaced beta of the jump 999 -> 888, not MONAI's beta_999
    c0, ct, var = scheduler.ddpm_coefficients(999, 888)
    assert c0 == pytest.approx(math.sqrt(a_prev) * beta / (1 - a_t), rel=1e-6)
    assert ct == pytest.approx(math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t), rel=1e-6)
    assert var == pytest.approx(beta * (1 - a_prev) / (1 - a_t), rel=1e-6)
    # the step itself applies them: x_prev = c0 x0 + ct x_t + sqrt(var) z
    x_t, x0, z = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), -0.25), torch.full((1, 1, 1, 1), 2.0)
    x_prev, _ = scheduler.step(x0, 0, x_t, z)
    expected = c0 * -0.25 + ct * 0.5 + math.sqrt(var) * 2.0
    assert x_prev.item() == pytest.approx(expected, rel=1e-5)


def test_ddim_eta_one_equals_respaced_ddpm_and_eta_zero_is_deterministic():
    ddpm, ddim1, ddim0 = (RespacedScheduler(T1000, s, 10, eta) for s, eta in (("ddpm", 0), ("ddim", 1), ("ddim", 0)))
    x_t, out, z = torch.randn(1, 1, 4, 4), torch.rand(1, 1, 4, 4) * 2 - 1, torch.randn(1, 1, 4, 4)
    torch.testing.assert_close(ddpm.step(out, 3, x_t, z)[0], ddim1.step(out, 3, x_t, z)[0], rtol=1e-5, atol=1e-6)
    assert not ddim0.stochastic and ddim1.stochastic
    a_prev = linear_alpha_bar(int(ddim0.timesteps[4]))
    a_t = linear_alpha_bar(int(ddim0.timesteps[3]))
    eps = (x_t - math.sqrt(a_t) * out) / math.sqrt(1 - a_t)
    torch.testing.assert_close(ddim0.step(out, 3, x_t)[0], math.sqrt(a_prev) * out + math.sqrt(1 - a_prev) * eps)
    with pytest.raises(ValueError, match="needs noise"):
        ddim1.step(out, 3, x_t)


@pytest.mark.parametrize("eta", [-0.5, 1.01, float("nan"), "1"])
def test_eta_is_validated(eta):
    with pytest.raises(ValueError, match="eta"):
        RespacedScheduler(T1000, "ddim", 10, eta)


def _tiny(context_slices=0, **kwargs):
    torch.manual_seed(0)
    return MedSegDiffUNet(
        2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, True), norm_num_groups=4, num_head_channels=8,
        context_slices=context_slices, **kwargs,
    ).eval()


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)])
def test_labels_identical_for_any_slice_batch_size_and_member_chunking(sampler, eta):
    net = _tiny()
    diffusion = DiffusionConfig(num_train_timesteps=20, prediction_type="sample")
    volume = torch.randn(1, 1, 16, 16, 9)
    results = []
    for slice_batch, chunk in ((1, 1), (2, None), (8, 2), (8, None)):
        sampler_ = EnsembleSampler(diffusion, sampler, 4, 3, member_batch_size=chunk, eta=eta)
        results.append(MedSegDiffInferer(sampler_, seed=3, slice_batch_size=slice_batch)(volume, net))
    for other in results[1:]:  # same noise per chain: only last-bit GEMM rounding of other batch sizes differs
        assert torch.equal(other["label"], results[0]["label"])
        torch.testing.assert_close(other["probs"], results[0]["probs"], atol=2e-5, rtol=0)
        torch.testing.assert_close(other["entropy"], results[0]["entropy"], atol=2e-5, rtol=0)
    # and a different seed really changes the noise
    other_seed = MedSegDiffInferer(EnsembleSampler(diffusion, sampler, 4, 3, eta=eta), seed=4)(volume, net)
    assert not torch.allclose(other_seed["probs"], results[0]["probs"])


def test_slices_of_one_batch_get_different_noise():
    net = _tiny()
    diffusion = DiffusionConfig(num_train_timesteps=20, prediction_type="sample")
    same_image = torch.randn(1, 1, 16, 16).expand(2, 1, 16, 16)
    result = EnsembleSampler(diffusion, "ddim", 2, 1)(net, same_image, sample_ids=[4, 5])
    assert not torch.allclose(result.member_probs[0, 0], result.member_probs[0, 1])


def test_slice_stack_puts_neighbours_in_channels_and_repeats_edges():
    volume = torch.arange(5.0).reshape(1, 5, 1, 1).expand(1, 5, 2, 2)
    stack = slice_stack(volume, [0, 2, 4], 1)
    assert stack.shape == (3, 3, 2, 2)
    assert stack[:, :, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]


def test_context_slices_network_runs_on_a_volume():
    net = _tiny(context_slices=1)
    diffusion = DiffusionConfig(num_train_timesteps=20, prediction_type="sample")
    out = MedSegDiffInferer(EnsembleSampler(diffusion, "ddim", 2, 2), slice_batch_size=3)(torch.randn(1, 1, 16, 16, 5), net)
    assert out["probs"].shape == (1, 1, 16, 16, 5)
