"""``train_on_arrays``: argument checks and both learning-rate schedules on a tiny synthetic task."""

import numpy as np
import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.training import LR_SCHEDULES, train_on_arrays


def _tiny_task() -> tuple[MedSegDiffUNet, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    net = MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    images = np.zeros((4, 1, 16, 16), np.float32)
    images[:, :, 4:12, 4:12] = 1.0
    labels = (images > 0.5).astype(np.uint8)
    return net, images, labels


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_each_schedule_trains_and_changes_the_weights(schedule):
    net, images, labels = _tiny_task()
    before = [p.detach().clone() for p in net.parameters()]
    losses = train_on_arrays(
        net, DiffusionConfig(num_train_timesteps=50), images, labels, iterations=4, batch_size=2,
        learning_rate=1e-3, lr_schedule=schedule, log_every=0,
    )  # fmt: skip
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lr_schedule": "step"}, "lr_schedule"), ({"iterations": 0}, "iterations"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    net, images, labels = _tiny_task()
    arguments = {"iterations": 2, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        train_on_arrays(net, DiffusionConfig(num_train_timesteps=50), images, labels, **arguments)


def test_the_schedule_changes_training():
    """Same seed, same data: the cosine schedule (warm-up from 1/25 of the rate) and a constant rate end apart."""
    weights = {}
    for schedule in LR_SCHEDULES:
        net, images, labels = _tiny_task()
        train_on_arrays(
            net, DiffusionConfig(num_train_timesteps=50), images, labels, iterations=4, batch_size=2,
            learning_rate=1e-3, lr_schedule=schedule, log_every=0,
        )  # fmt: skip
        weights[schedule] = [p.detach().clone() for p in net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(weights["cosine"], weights["constant"]))
