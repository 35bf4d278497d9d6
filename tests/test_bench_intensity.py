"""The bench's intensity experiment: head-quantile normalisation, landmark standardisation, extra augmentations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Lambdad

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.intensity import HEAD, head_quantiles, standardize  # noqa: E402
from medsegdiff.diffusion import DiffusionConfig  # noqa: E402
from medsegdiff.network import MedSegDiffUNet  # noqa: E402
from medsegdiff.training import train_on_arrays  # noqa: E402


def _head(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((12, 12, 6), dtype=np.float32)
    image[2:10, 2:10] = rng.uniform(0.15, 1.0, size=(8, 8, 6))  # a "head" of distinct values in air
    return image


def test_head_quantiles_ignore_any_increasing_contrast_change_and_leave_air():
    image = _head()
    head = image > HEAD
    brighter = image.copy()
    brighter[head] = HEAD + (1 - HEAD) * ((image[head] - HEAD) / (1 - HEAD)) ** 0.4  # bright brain, dark fat alike
    np.testing.assert_allclose(head_quantiles(brighter), head_quantiles(image), atol=1e-6)
    values = np.sort(head_quantiles(image)[head])
    np.testing.assert_allclose(np.diff(values), (1 - HEAD) / head.sum(), atol=1e-6)  # uniform over the head
    assert values[-1] == 1.0
    np.testing.assert_array_equal(head_quantiles(image)[~head], image[~head])


def test_standardize_gives_the_reference_percentiles():
    image = _head(1)
    reference = np.linspace(0.3, 0.7, 101) ** 2
    out = standardize(image, reference)
    head = image > HEAD
    np.testing.assert_allclose(np.percentile(out[head], np.linspace(0, 100, 101)), reference, atol=2e-3)
    np.testing.assert_array_equal(out[~head], image[~head])
    order = np.argsort(image[head])
    assert np.all(np.diff(out[head][order]) >= 0)  # the contrast's order is kept: the brightest stays brightest


def test_train_on_arrays_applies_the_extra_augmentations_to_every_sample():
    calls = []

    def record(image: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(image.shape))
        return image

    network = MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    images = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    labels = (images > 0.5).astype(np.float32)
    train_on_arrays(network, DiffusionConfig(num_train_timesteps=10), images, labels, iterations=3, batch_size=2,
                    log_every=0, extra_augmentations=[Lambdad(keys="image", func=record)])
    assert calls == [(1, 16, 16)] * 6
