"""The baselines and ablations MedSegDiff is compared with (tiny networks, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsegdiff.baselines import (
    PlainSegmenter,
    count_parameters,
    ensemble_distributions,
    mc_dropout_distributions,
    size_matched_unet,
    softmax_distributions,
    train_segmenter,
)
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.training import train_on_arrays

TINY = {"spatial_dims": 2, "spatial_size": (16, 16), "channels": (8, 16), "attention_levels": (False, False),
        "norm_num_groups": 4, "num_head_channels": 8}


def _toy(n: int = 12, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(0, 0.1, (n, 1, size, size)).astype(np.float32)
    labels = np.zeros((n, 1, size, size), np.uint8)
    labels[:, :, 4:12, 4:12] = 1
    images[labels.astype(bool)] += 1.0
    return images, labels


def test_size_matched_unet_is_close_to_the_target():
    target = count_parameters(MedSegDiffUNet(**{**TINY, "channels": (16, 32, 64), "attention_levels": (False,) * 3}))
    unet = size_matched_unet(target, levels=3)
    assert abs(count_parameters(unet) - target) / target < 0.15
    bigger = size_matched_unet(4 * target, levels=3)
    assert count_parameters(bigger) > 2 * count_parameters(unet)
    with pytest.raises(ValueError, match="target_parameters"):
        size_matched_unet(0)


def test_plain_segmenter_ignores_noise_and_time_and_learns_the_mask():
    torch.manual_seed(0)
    plain = PlainSegmenter(MedSegDiffUNet(**TINY))
    image = torch.randn(2, 1, 16, 16)
    a = plain(torch.randn(2, 1, 16, 16), torch.tensor([999, 10]), context=image)
    b = plain(torch.randn(2, 1, 16, 16), torch.tensor([0, 500]), context=image)
    assert torch.equal(a, b)
    images, labels = _toy()
    losses = train_on_arrays(plain, DiffusionConfig(prediction_type="sample"), images, labels, 60, batch_size=4,
                             learning_rate=3e-3, augment=False, log_every=0)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    prob = plain.probabilities(torch.from_numpy(images[:2]))
    dice = 2 * ((prob > 0.5) & torch.from_numpy(labels[:2]).bool()).sum() / ((prob > 0.5).sum() + labels[:2].sum())
    assert dice > 0.8


def test_no_fusion_hands_image_features_on_untouched():
    torch.manual_seed(0)
    net = MedSegDiffUNet(**TINY, use_fusion=False)
    full = MedSegDiffUNet(**TINY)
    assert net.config["use_fusion"] is False
    assert count_parameters(net) < count_parameters(full)  # the LayerNorms and FF-Parser weights are gone
    features, mask = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    assert net.fusions[0](features, mask) is features
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([3, 4]), context=torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16)


def test_train_segmenter_loss_falls_and_uncertainty_helpers():
    torch.manual_seed(0)
    unet = size_matched_unet(20_000, levels=2, widths=range(4, 17, 4), dropout=0.3)
    images, labels = _toy()
    losses = train_segmenter(unet, images, labels, 40, batch_size=4, learning_rate=3e-3)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    x = torch.from_numpy(images[:2])
    soft = softmax_distributions(unet, x)
    assert soft.shape == (1, 2, 2, 16, 16) and torch.equal(soft, softmax_distributions(unet, x))
    mc = mc_dropout_distributions(unet, x, passes=3)
    assert mc.shape == (3, 2, 2, 16, 16)
    assert not torch.allclose(mc[0], mc[1])  # dropout is on during the passes
    assert not unet.training  # and off again afterwards
    assert torch.allclose(mc.sum(dim=2), torch.ones(3, 2, 16, 16))
    assert ensemble_distributions([unet, unet], x).shape == (2, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="2 passes"):
        mc_dropout_distributions(unet, x, passes=1)
