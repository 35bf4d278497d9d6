"""Training the compared models on axial slices: wall-clock budgets and interleaved side-by-side training."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config
from medsegdiff.training import segmentation_augmentations, train_on_arrays

__all__ = ["train_diffusion_for", "make_unet", "SliceTrainer", "train_side_by_side"]


class _BudgetSpent(Exception):
    """Raised from the training callback when the wall-clock budget is used up."""


def train_diffusion_for(
    network: MedSegDiffUNet,
    diffusion: DiffusionConfig,
    images: np.ndarray,
    labels: np.ndarray,
    seconds: float,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """``medsegdiff.training.train_on_arrays`` (batch 8, its augmentations) stopped after ``seconds``."""
    from monai.utils import set_determinism

    device = next(network.parameters()).device
    losses: list[float] = []
    start = time.perf_counter()

    def stop_when_spent(iteration: int, loss: float) -> None:
        losses.append(loss)
        if time.perf_counter() - start >= seconds:
            raise _BudgetSpent

    try:  # constant learning rate: a time budget has no known last iteration to anneal towards
        train_on_arrays(
            network, diffusion, images, labels, iterations=10**9, batch_size=8, learning_rate=learning_rate,
            lr_schedule="constant", augment=True, seed=seed, device=device, log_every=0, callback=stop_when_spent,
        )
    except _BudgetSpent:
        pass
    finally:
        network.eval()
        set_determinism(None)
    return {
        "iterations": len(losses),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }


def make_unet(num_classes: int) -> torch.nn.Module:
    """The baseline: MONAI's 2D ``UNet`` with the sample model's channel widths, C+1 softmax outputs."""
    from monai.networks.nets import UNet

    channels = tuple(SAMPLE_MODEL_2D["channels"])
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=num_classes + 1, channels=channels,
        strides=(2,) * (len(channels) - 1), num_res_units=2,
    )


class SliceTrainer:
    """One model's training state, advanced one batch at a time (so two models can share the CPU fairly).

    The batches are built as in ``train_on_arrays``: 8 random slices, ``segmentation_augmentations``, AdamW
    (weight decay 1e-4). ``kind="diffusion"`` uses the MedSegDiff objective of ``train_on_arrays``
    (``SegDiffusionPrepareBatch`` + ``diffusion_loss``); ``kind="unet"`` uses MONAI's Dice + cross-entropy.
    """

    def __init__(self, kind: str, network: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                 learning_rate: float = 1e-3, seed: int = 0, diffusion: DiffusionConfig | None = None) -> None:
        from monai.losses import DiceCELoss

        from medsegdiff.diffusion import SegDiffusionPrepareBatch, diffusion_loss, make_scheduler

        self.kind, self.network, self.images, self.labels = kind, network, images, labels
        self.device = next(network.parameters()).device
        self.rng = np.random.default_rng(seed)
        self.transform = segmentation_augmentations(2)
        self.transform.set_random_state(seed=seed)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
        if kind == "diffusion":
            diffusion = diffusion or sample_diffusion_config()
            scheduler = make_scheduler(diffusion, "ddpm")
            prepare = SegDiffusionPrepareBatch(scheduler, network.num_classes, diffusion.prediction_type)
            self.loss = lambda batch: diffusion_loss(network, scheduler, prepare, batch, self.device)
        elif kind == "unet":
            dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
            self.loss = lambda batch: dice_ce(network(batch["image"].to(self.device)), batch["label"].to(self.device))
        else:
            raise ValueError(f"kind must be 'diffusion' or 'unet', got {kind!r}")
        self.seconds = 0.0
        self.losses: list[float] = []

    def step(self, timed: bool = True) -> None:
        """One iteration; ``timed=False`` leaves it out of :attr:`seconds` (one-time kernel set-up)."""
        start = time.perf_counter()
        self.network.train()
        idx = self.rng.integers(0, self.images.shape[0], size=8)
        items = [
            self.transform({"image": torch.as_tensor(self.images[i]).float(), "label": torch.as_tensor(self.labels[i]).float()})
            for i in idx
        ]
        batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in ("image", "label")}
        batch["label"] = batch["label"].round()
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        if timed:
            self.seconds += time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        return {
            "iterations": len(self.losses),
            "seconds": round(self.seconds, 1),
            "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "parameters": sum(p.numel() for p in self.network.parameters()),
        }


def train_side_by_side(
    trainers: Sequence[SliceTrainer], seconds: float, seed: int = 0, warmup: int = 2
) -> list[dict[str, Any]]:
    """Alternate single iterations of ``trainers`` until each has used ``seconds`` of its own wall time.

    Interleaving gives every model the same share of a shared, fluctuating CPU (other jobs' load hits all).
    The first ``warmup`` iterations of each (kernel set-up, several times slower on a CPU) are not timed.
    """
    torch.manual_seed(seed)
    for t in trainers:
        for _ in range(warmup):
            t.step(timed=False)
    while any(t.seconds < seconds for t in trainers):
        for t in trainers:
            if t.seconds < seconds:
                t.step()
    for t in trainers:
        t.network.eval()
    return [t.stats() for t in trainers]

