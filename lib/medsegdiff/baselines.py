"""What MedSegDiff is compared with: a size-matched MONAI U-Net, the same network without diffusion, ablations.

* :func:`size_matched_unet` — MONAI ``UNet`` (channels k, 2k, 4k, 8k, two residual units, dropout) whose width k
  is chosen so its parameter count is closest to a target (the MedSegDiff network's). Trained with
  :func:`train_segmenter` (MONAI ``DiceCELoss``); its uncertainty is the softmax entropy, MC-dropout
  (:func:`mc_dropout_distributions`: dropout left on at inference, N passes, as MONAI Label's epistemic scoring
  runs its infer task in train mode) or a deep ensemble of independently trained U-Nets
  (:func:`ensemble_distributions`).
* :class:`PlainSegmenter` — the *same* ``MedSegDiffUNet`` with the diffusion taken out: the noisy-mask input is
  always zero and t is always 0, and the output is the mask itself. Train it with
  ``medsegdiff.training.train_on_arrays`` and ``DiffusionConfig(prediction_type="sample")``: the loss is then the
  MSE between the output and the mask in [-1, 1] (x0), exactly the diffusion objective without the noise, so
  the comparison isolates what diffusion adds.
* The ablations are switches of ``MedSegDiffUNet`` itself: ``use_fusion=False`` (attentive fusion off: the image
  features pass every level unchanged) and ``use_ff_parser=False`` (the FF-Parser off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor, set_determinism
from torch import nn

from .diffusion import diffusion_to_probabilities
from .fusion import class_distribution
from .network import MedSegDiffUNet
from .training import segmentation_augmentations

__all__ = [
    "count_parameters",
    "size_matched_unet",
    "PlainSegmenter",
    "train_segmenter",
    "softmax_distributions",
    "mc_dropout_distributions",
    "ensemble_distributions",
    "diffusion_member_distributions",
]


def count_parameters(network: nn.Module) -> int:
    """Trainable parameters of ``network``."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def size_matched_unet(
    target_parameters: int,
    num_classes: int = 1,
    spatial_dims: int = 2,
    in_channels: int = 1,
    dropout: float = 0.2,
    levels: int = 4,
    widths: Sequence[int] = range(8, 129, 4),
) -> nn.Module:
    """MONAI ``UNet`` with C + 1 softmax outputs and the base width (from ``widths``) whose size is closest to
    ``target_parameters``."""
    from monai.networks.nets import UNet

    if target_parameters < 1:
        raise ValueError(f"target_parameters must be >= 1, got {target_parameters}")

    def build(k: int) -> nn.Module:
        return UNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes + 1,
            channels=tuple(k * 2**i for i in range(levels)), strides=(2,) * (levels - 1), num_res_units=2,
            dropout=dropout,
        )

    sizes: dict[int, int] = {}
    for k in sorted(widths):  # the size grows with k: stop at the first one above the target
        sizes[k] = count_parameters(build(k))
        if sizes[k] >= target_parameters:
            break
    best = min(sizes, key=lambda k: abs(sizes[k] - target_parameters))
    return build(best)


class PlainSegmenter(nn.Module):
    """A ``MedSegDiffUNet`` used as a plain segmenter: zero noisy-mask input, t = 0, output = the mask in [-1, 1].

    It keeps the interface of the network (``forward(x, timesteps, context=...)``, ``encode_image``,
    ``spatial_dims``, ``num_classes``), so ``train_on_arrays`` trains it; whatever ``x`` and ``timesteps`` it is
    given are replaced by zeros.
    """

    def __init__(self, network: MedSegDiffUNet) -> None:
        super().__init__()
        self.network = network
        self.spatial_dims = network.spatial_dims
        self.num_classes = network.num_classes
        self.out_channels = network.out_channels
        self.in_channels = network.in_channels
        self.config = network.config

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.encode_image(image)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.network(
            torch.zeros_like(x), torch.zeros_like(timesteps), context=context, image_features=image_features
        )

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities (B, C, *spatial) of a batch of images: one network call."""
        shape = (image.shape[0], self.num_classes, *image.shape[2:])
        x = torch.zeros(shape, device=image.device)
        t = torch.zeros(image.shape[0], dtype=torch.long, device=image.device)
        return diffusion_to_probabilities(self(x, t, context=image).float())


def train_segmenter(
    network: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    iterations: int,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train a softmax segmenter (C + 1 output channels) with MONAI ``DiceCELoss`` on axial slices.

    Same recipe as ``medsegdiff.training.train_on_arrays``: random slices, ``segmentation_augmentations``,
    AdamW (weight decay 1e-4), warm-up + cosine learning rate (``OneCycleLR``, 5 % warm-up). Returns the losses.
    """
    from monai.losses import DiceCELoss

    if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[2:]:
        raise ValueError(f"images {images.shape} and labels {labels.shape} do not pair up")
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations and batch_size must be >= 1, got {iterations} and {batch_size}")
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    transform = segmentation_augmentations(images.ndim - 2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=iterations, pct_start=0.05, anneal_strategy="cos"
    )
    network.to(device).train()
    losses: list[float] = []
    for iteration in range(1, iterations + 1):
        idx = rng.integers(0, images.shape[0], size=batch_size)
        items = [transform({"image": torch.as_tensor(images[i]).float(), "label": torch.as_tensor(labels[i]).float()}) for i in idx]
        batch = {k: torch.stack([convert_to_tensor(item[k], track_meta=False) for item in items]) for k in ("image", "label")}
        loss = loss_fn(network(batch["image"].to(device)), batch["label"].round().to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach().item())
        if callback is not None:
            callback(iteration, losses[-1])
        network.train()  # a callback may have switched to eval for a validation pass
    network.eval()
    set_determinism(None)
    return losses


@torch.no_grad()
def softmax_distributions(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One deterministic pass (eval mode): class distributions (1, B, C+1, *spatial)."""
    network.eval()
    return torch.softmax(network(images).float(), dim=1)[None]


@torch.no_grad()
def mc_dropout_distributions(network: nn.Module, images: torch.Tensor, passes: int = 10, seed: int = 0) -> torch.Tensor:
    """MC-dropout: ``passes`` forward passes in train mode (dropout on): (passes, B, C+1, *spatial).

    The network must not hold batch-norm statistics (MONAI ``UNet`` uses instance norm by default).
    """
    if passes < 2:
        raise ValueError(f"MC-dropout needs >= 2 passes, got {passes}")
    torch.manual_seed(seed)
    network.train()
    try:
        return torch.stack([torch.softmax(network(images).float(), dim=1) for _ in range(passes)])
    finally:
        network.eval()


@torch.no_grad()
def ensemble_distributions(networks: Sequence[nn.Module], images: torch.Tensor) -> torch.Tensor:
    """Deep ensemble: every network's softmax in eval mode, (N, B, C+1, *spatial)."""
    return torch.cat([softmax_distributions(n, images) for n in networks])


def diffusion_member_distributions(member_probs: torch.Tensor) -> torch.Tensor:
    """Ensemble member foreground probabilities (N, B, C, *spatial) → class distributions (N, B, C+1, *spatial)."""
    n, b = member_probs.shape[:2]
    flat = member_probs.reshape(n * b, *member_probs.shape[2:])
    return class_distribution(flat).reshape(n, b, -1, *member_probs.shape[3:])
