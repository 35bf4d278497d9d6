"""The diffusion side of MedSegDiff: noise schedule, mask encoding and the training objective.

Schedulers are MONAI's (``monai.networks.schedulers``); they never hold the network. Masks with C foreground
classes are diffused as C channels of a one-hot encoding scaled to [-1, 1] (binary: C = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import DiffusionInferer
from monai.losses import DiceLoss
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler

__all__ = [
    "DiffusionConfig",
    "SAMPLERS",
    "make_scheduler",
    "labels_to_diffusion_target",
    "diffusion_to_probabilities",
    "SegDiffusionPrepareBatch",
    "SegDiffusionLoss",
    "diffusion_loss",
]

SAMPLERS = ("ddim", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DiffusionConfig:
    """How the network was trained to denoise (stored in every checkpoint).

    Args:
        num_train_timesteps: T, the length of the forward process.
        schedule: a MONAI beta schedule (``linear_beta``, ``scaled_linear_beta``, ``sigmoid_beta``, ``cosine``).
        prediction_type: what the network predicts: ``epsilon`` (the seed's objective), ``sample`` (x0) or
            ``v_prediction``.
        mask_scale: the one-hot mask is diffused in [-mask_scale, mask_scale] (Chen 2023, "On the importance of
            noise scheduling for diffusion models": input scaling b). Below 1 every step is noisier relative to
            the mask, so more of the training steps can only be solved from the image, and a sampling chain
            commits to a mask later; 1 is the usual [-1, 1].
        dice_weight: weight of a soft Dice term on the predicted mask added to the MSE (:class:`SegDiffusionLoss`;
            x0 objective only). MSE on a one-hot target weighs every voxel alike, so a class covering 2 % of a
            slice costs little to miss; Dice weighs every class alike, whatever its size. 0: plain MSE (the paper's).
    """

    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    prediction_type: str = "epsilon"
    mask_scale: float = 1.0
    dice_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if not isinstance(self.mask_scale, (int, float)) or not 0.0 < float(self.mask_scale) <= 1.0:
            raise ValueError(f"mask_scale must be a number in (0, 1], got {self.mask_scale!r}")
        if not isinstance(self.dice_weight, (int, float)) or float(self.dice_weight) < 0.0:
            raise ValueError(f"dice_weight must be a number >= 0, got {self.dice_weight!r}")
        if self.dice_weight and self.prediction_type != "sample":
            raise ValueError(
                f"dice_weight needs the x0 objective (prediction_type='sample'): a {self.prediction_type!r} network "
                f"does not predict the mask, got dice_weight={self.dice_weight}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scheduler(config: DiffusionConfig, sampler: str = "ddim") -> Scheduler:
    """A MONAI scheduler for ``sampler`` (``"ddim"`` or ``"ddpm"``) matching the training ``config``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls(
        num_train_timesteps=config.num_train_timesteps,
        schedule=config.schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


def labels_to_diffusion_target(
    labels: torch.Tensor, num_classes: int, background: bool = False, scale: float = 1.0
) -> torch.Tensor:
    """Integer labels (B, 1, *spatial) with values 0..C → one-hot channels in [-scale, scale].

    Args:
        background: also diffuse the background channel (C + 1 channels, background first); else C channels.
        scale: ``DiffusionConfig.mask_scale``.
    """
    if labels.shape[1] != 1:
        raise ValueError(f"labels must have one channel of class indices, got shape {tuple(labels.shape)}")
    idx = labels[:, 0].long()
    if idx.min() < 0 or idx.max() > num_classes:
        raise ValueError(f"label values must lie in 0..{num_classes}, found {int(idx.min())}..{int(idx.max())}")
    onehot = F.one_hot(idx, num_classes + 1).movedim(-1, 1)
    return ((onehot if background else onehot[:, 1:]).float() * 2.0 - 1.0) * scale


def diffusion_to_probabilities(
    x0: torch.Tensor, background: bool = False, dim: int = 1, scale: float = 1.0
) -> torch.Tensor:
    """Map a denoised mask estimate in [-scale, scale] to per-class foreground probabilities in [0, 1].

    Args:
        x0: (…, C, *spatial) foreground channels, or (…, C + 1, *spatial) with the background first.
        background: ``x0`` has the background channel: the C + 1 values are normalised to a distribution and
            its foreground part returned, so a class is chosen by argmax over all C + 1 (small classes survive).
        dim: the channel dimension of ``x0``.
        scale: ``DiffusionConfig.mask_scale``.
    """
    probs = ((x0 / scale + 1.0) / 2.0).clamp(0.0, 1.0)
    if not background:
        return probs
    dist = (probs + 1e-6) / (probs + 1e-6).sum(dim=dim, keepdim=True)
    return dist.narrow(dim, 1, dist.shape[dim] - 1)


class SegDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``prepare_batch`` for MONAI engines: diffuses the *label* conditioned on the *image*.

    Turns ``{"image", "label"}`` batches into ``(x0 = one-hot label in [-1, 1], target, (), {noise, timesteps,
    condition=image})`` for :class:`monai.inferers.DiffusionInferer`; the target follows ``prediction_type``
    (ε, x0 or v).

    Args:
        scheduler: the training scheduler (for v-prediction targets).
        num_classes: foreground classes C.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        background: diffuse the background channel too (networks with ``background_channel=True``).
        mask_scale: ``DiffusionConfig.mask_scale``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_classes: int,
        prediction_type: str = "epsilon",
        background: bool = False,
        mask_scale: float = 1.0,
    ) -> None:
        super().__init__(num_train_timesteps=scheduler.num_train_timesteps, condition_name="image")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.prediction_type = prediction_type
        self.background = background
        self.mask_scale = mask_scale

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "sample":
            return images
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)
        return noise

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x0 = labels_to_diffusion_target(
            torch.as_tensor(batchdata["label"]), self.num_classes, self.background, self.mask_scale
        )
        x0 = x0.to(device=device, non_blocking=non_blocking)
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        target = self.get_target(x0, noise, timesteps)
        condition = torch.as_tensor(batchdata["image"]).float().to(device=device, non_blocking=non_blocking)
        return x0, target, (), {"noise": noise, "timesteps": timesteps, "condition": condition}


class SegDiffusionLoss(torch.nn.Module):
    """The training loss ``loss(prediction, target)``: MSE, plus ``dice_weight`` x a soft Dice on the mask.

    With the x0 objective the target is the one-hot mask in [-scale, scale]; prediction and target are mapped to
    [0, 1] per channel and scored with MONAI's :class:`~monai.losses.DiceLoss` over the whole batch, every channel
    (the background channel too, when the network diffuses it) counted once, whatever its size.

    Args:
        config: the network's :class:`DiffusionConfig` (objective, mask scale, ``dice_weight``).
    """

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.dice_weight = float(config.dice_weight)
        self.scale = float(config.mask_scale)
        self.dice = DiceLoss(include_background=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(prediction.float(), target.float())
        if not self.dice_weight:
            return loss
        estimate = ((prediction.float() / self.scale + 1.0) / 2.0).clamp(0.0, 1.0)
        reference = ((target.float() / self.scale + 1.0) / 2.0).round()
        return loss + self.dice_weight * self.dice(estimate, reference)


def diffusion_loss(
    network: torch.nn.Module,
    scheduler: Scheduler,
    prepare_batch: SegDiffusionPrepareBatch,
    batch: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    loss: SegDiffusionLoss | None = None,
) -> torch.Tensor:
    """One evaluation of the training objective L = ‖target − net(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, I, t)‖² (+ ``loss``'s
    Dice term; ``None``: MSE alone)."""
    x0, target, _, kwargs = prepare_batch(batch, device)
    prediction = DiffusionInferer(scheduler)(x0, network, **kwargs)
    return (loss or F.mse_loss)(prediction.float(), target)
