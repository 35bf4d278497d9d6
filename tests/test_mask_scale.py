"""Input scaling of the diffused mask (``DiffusionConfig.mask_scale``, Chen 2023): encoding, training target,
clipping, decoding and the marks all use [-b, b]; checkpoints keep b and older ones load with b = 1."""

import pytest
import torch
from torch import nn

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.diffusion import (
    DiffusionConfig,
    SegDiffusionPrepareBatch,
    diffusion_to_probabilities,
    labels_to_diffusion_target,
    make_scheduler,
)
from medsegdiff.interaction import KnownRegion
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.schedulers import RespacedScheduler

SCALED = DiffusionConfig(num_train_timesteps=1000, schedule="linear_beta", prediction_type="sample", mask_scale=0.3)


def test_labels_encode_to_plus_minus_the_scale_and_decode_back():
    labels = torch.tensor([[[0, 1, 2]]])[:, None]  # (1, 1, 1, 3), two foreground classes
    x0 = labels_to_diffusion_target(labels, 2, scale=0.3)
    expected = torch.tensor([[[-0.3, 0.3, -0.3]], [[-0.3, -0.3, 0.3]]])[None]
    torch.testing.assert_close(x0, expected)
    torch.testing.assert_close(diffusion_to_probabilities(x0, scale=0.3), (expected > 0).float())
    # the middle of the range is p = 0.5 whatever the scale
    torch.testing.assert_close(diffusion_to_probabilities(torch.tensor([0.0, 0.15]), scale=0.3), torch.tensor([0.5, 0.75]))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, "0.3"])
def test_mask_scale_is_validated(bad):
    with pytest.raises(ValueError, match="mask_scale"):
        DiffusionConfig(mask_scale=bad)


def test_training_target_is_the_scaled_mask():
    prepare = SegDiffusionPrepareBatch(make_scheduler(SCALED, "ddpm"), 1, "sample", mask_scale=0.3)
    label = torch.zeros(2, 1, 4, 4)
    label[:, :, :2] = 1
    x0, target, _, kwargs = prepare({"image": torch.rand(2, 1, 4, 4), "label": label})
    assert sorted(x0.unique().tolist()) == pytest.approx([-0.3, 0.3])
    torch.testing.assert_close(target, x0)


def test_scheduler_clips_x0_to_the_scaled_range():
    scheduler = RespacedScheduler(SCALED, "ddim", 1)
    x0, _ = scheduler.split(torch.tensor([5.0, -5.0, 0.1]), 999, torch.zeros(3))
    torch.testing.assert_close(x0, torch.tensor([0.3, -0.3, 0.1]))


class Oracle(nn.Module):
    """Predicts x0 = the scaled mask of its image (image > 0.5), whatever x_t: a perfect x0 network."""

    spatial_dims, num_classes, out_channels, config = 2, 1, 1, {}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def forward(self, x, t, image_features=None):
        self.last_input = x
        return ((image_features > 0.5).float() * 2 - 1) * 0.3


def test_a_perfect_scaled_network_gives_certain_probabilities_and_marks_keep_their_class():
    image = torch.zeros(1, 1, 6, 6)
    image[..., :3, :] = 1.0
    result = EnsembleSampler(SCALED, "ddim", 4, 3)(Oracle(), image)
    torch.testing.assert_close(result.probs, (image > 0.5).float())
    assert float(result.entropy.max()) < 1e-4
    marks = torch.full((1, 1, 6, 6), -1)
    marks[..., 5, 5] = 1  # a foreground click where the network says background
    oracle = Oracle()
    marked = EnsembleSampler(SCALED, "ddim", 4, 3)(oracle, image, known=KnownRegion(marks))
    assert float(marked.member_probs[:, 0, 0, 5, 5].min()) == 1.0
    assert int(marked.label[0, 0, 5, 5]) == 1
    # RePaint: at the last step (t = 0, sqrt(1 - alpha_bar) = 0.01) the chains read the marked voxel as the scaled mask
    torch.testing.assert_close(oracle.last_input[:, 0, 5, 5], torch.full((3,), 0.3), atol=0.05, rtol=0)


def test_checkpoint_keeps_the_scale_and_older_checkpoints_load_with_one(tmp_path):
    network = MedSegDiffUNet(spatial_dims=2, in_channels=1, num_classes=1, channels=(4, 8), attention_levels=(False, False),
                             num_res_blocks=1, norm_num_groups=2, num_head_channels=4)
    path = tmp_path / "model.pt"
    save_checkpoint(path, network, SCALED, {})
    assert load_checkpoint(path)[1].mask_scale == 0.3
    payload = torch.load(path, weights_only=True)
    del payload["diffusion_config"]["mask_scale"]  # a checkpoint written before mask_scale existed
    torch.save(payload, path)
    assert load_checkpoint(path)[1].mask_scale == 1.0
