"""The training loss with a soft Dice term (``DiffusionConfig.dice_weight``): its value, where it applies, and that
training and checkpoints carry it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.diffusion import DiffusionConfig, SegDiffusionLoss, labels_to_diffusion_target
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.training import train_on_arrays


def _tiny(num_classes: int = 1, background: bool = False) -> MedSegDiffUNet:
    torch.manual_seed(0)
    return MedSegDiffUNet(spatial_dims=2, in_channels=1, num_classes=num_classes, channels=(4, 8),
                          attention_levels=(False, False), num_res_blocks=1, norm_num_groups=2, num_head_channels=4,
                          background_channel=background)


def test_loss_is_mse_plus_the_weighted_dice_of_every_channel_by_hand():
    labels = torch.tensor([0, 0, 1, 2]).reshape(1, 1, 1, 4)  # background, background, class 1, class 2
    target = labels_to_diffusion_target(labels, 2, background=True)  # channels: background, class 1, class 2
    prediction = torch.full_like(target, -1.0)
    prediction[:, 0] = 1.0  # "all background"
    # MSE: the background channel is wrong at 2 voxels, each class at 1, each by 2 -> 4 x 4 / 12 values
    mse = 16 / 12
    # Dice: background 2 * 2 / (4 + 2) = 2/3, both classes 0 -> losses 1/3, 1, 1 -> mean 7/9
    loss = SegDiffusionLoss(DiffusionConfig(prediction_type="sample", dice_weight=0.5))(prediction, target)
    assert float(loss) == pytest.approx(mse + 0.5 * 7 / 9, abs=1e-4)
    assert float(SegDiffusionLoss(DiffusionConfig(prediction_type="sample", dice_weight=0.5))(target, target)) == 0.0


def test_without_dice_weight_the_loss_is_plain_mse():
    prediction, target = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    loss = SegDiffusionLoss(DiffusionConfig(prediction_type="sample"))(prediction, target)
    assert torch.equal(loss, F.mse_loss(prediction, target))


@pytest.mark.parametrize("settings", [{"dice_weight": -0.1, "prediction_type": "sample"},
                                      {"dice_weight": "1", "prediction_type": "sample"},
                                      {"dice_weight": 1.0, "prediction_type": "epsilon"},
                                      {"dice_weight": 1.0, "prediction_type": "v_prediction"}])
def test_dice_weight_is_validated(settings):
    with pytest.raises(ValueError, match="dice_weight"):
        DiffusionConfig(**settings)


def test_training_adds_the_dice_term_to_every_iteration():
    rng = np.random.default_rng(0)
    images = rng.random((4, 1, 16, 16)).astype(np.float32)
    labels = np.zeros((4, 1, 16, 16), np.float32)
    labels[:, :, 4:8, 4:8] = 1
    runs = {}
    for weight in (0.0, 1.0):
        config = DiffusionConfig(num_train_timesteps=10, prediction_type="sample", dice_weight=weight)
        runs[weight] = train_on_arrays(_tiny(), config, images, labels, iterations=1, batch_size=2, augment=False,
                                       log_every=0)
    # same weights, batch, noise and time steps: the first losses differ by the untrained network's Dice term
    assert runs[1.0][0] - runs[0.0][0] > 0.3


def test_checkpoint_keeps_the_dice_weight_and_older_checkpoints_load_with_zero(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _tiny(), DiffusionConfig(prediction_type="sample", dice_weight=0.7), {})
    assert load_checkpoint(path)[1].dice_weight == 0.7
    payload = torch.load(path, weights_only=True)
    del payload["diffusion_config"]["dice_weight"]  # a checkpoint written before dice_weight existed
    torch.save(payload, path)
    assert load_checkpoint(path)[1].dice_weight == 0.0


def test_the_train_task_trains_with_the_dice_weight_of_the_checkpoint_it_starts_from(tmp_path):
    from monailabel.tasks.train.basic_train import Context

    from monailabel_app.lib.model_files import ModelFiles, ModelInfo
    from monailabel_app.lib.trainers.medsegdiff import MedSegDiffTrain

    served = save_checkpoint(tmp_path / "served.pt", _tiny(2, background=True),
                             DiffusionConfig(prediction_type="sample", dice_weight=0.5), {"labels": {"csf": 1, "gm": 2}})
    task = MedSegDiffTrain(ModelFiles("medsegdiff", served, tmp_path / "train"), ModelInfo.read(served), "train")
    context = Context()
    context.pretrained = "true"
    task.network(context)
    labels = torch.tensor([0, 0, 1, 2]).reshape(1, 1, 1, 4)
    target = labels_to_diffusion_target(labels, 2, background=True)
    prediction = torch.full_like(target, -1.0)
    prediction[:, 0] = 1.0
    assert float(task.loss_function(context)(prediction, target)) == pytest.approx(16 / 12 + 0.5 * 7 / 9, abs=1e-4)
