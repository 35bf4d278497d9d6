"""The compared models: how each is built, trained (fixed iterations, cosine schedule) and applied to a head.

``medsegdiff`` is the sample model's architecture without its guidance channels (``PROTOCOL_NETWORK``, x0
prediction; ``medsegdiff_guided`` is the sample model's own, with them); ``medsegdiff_no_ff`` and
``medsegdiff_no_fusion`` are its ablations; ``medsegdiff_fused_skips`` (decoder skips carry mask + fused image
features) and ``medsegdiff_eps`` (the paper's ε objective) are the design experiments (``EXPERIMENTS``, only with
``BENCH_EXPERIMENTS=1``); ``plain_segmenter`` is the same network without diffusion
(``medsegdiff.baselines.PlainSegmenter``: zero noisy-mask input, t = 0, MSE on x0); ``unet`` is MONAI's ``UNet``
sized to the same parameter count (Dice + CE, dropout 0.2 so MC-dropout can use it). All train with batch 8,
AdamW 1e-3 and warm-up + cosine learning rate for the same number of iterations.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medsegdiff.baselines import (
    PlainSegmenter,
    count_parameters,
    diffusion_member_distributions,
    mc_dropout_distributions,
    size_matched_unet,
    softmax_distributions,
    train_segmenter,
)
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.fusion import class_distribution
from medsegdiff.inferer import member_shares, slice_stack
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.training import RandBoundaryShiftd, train_on_arrays

from .grid import AXIAL, GridVolume, unview_stack

__all__ = ["PROTOCOL_NETWORK", "MODELS", "DIFFUSION_MODELS", "VARIANTS", "EXPERIMENTS", "INTERACTIVE_MODELS", "SERVED_RECIPE", "MEMBERS_PER_VIEW", "eval_members", "guided", "protocol_models", "LEARNING_RATE", "BATCH_SIZE", "build", "train", "predict", "NetworkCalls"]

PROTOCOL_NETWORK: dict[str, Any] = {**SAMPLE_MODEL_2D, "guidance_channels": 0}
"""The protocol's MedSegDiff: the sample model's network without the guidance channels it gained after the
protocol was measured (``medsegdiff_guided`` adds them back); the baselines are sized to it."""

VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "medsegdiff": ({}, "sample"),
    "medsegdiff_fused_skips": ({"skip_source": "fused"}, "sample"),
    "medsegdiff_eps": ({}, "epsilon"),
    "medsegdiff_v": ({}, "v_prediction"),
    "medsegdiff_guided": ({"guidance_channels": 2}, "sample"),
    "medsegdiff_no_ff": ({"use_ff_parser": False}, "sample"),
    "medsegdiff_no_fusion": ({"use_fusion": False}, "sample"),
    "medsegdiff_scale03": ({}, "sample"),
    "medsegdiff_scale01": ({}, "sample"),
    "medsegdiff_triplanar": ({}, "sample"),
    "medsegdiff_25d": ({"context_slices": 2}, "sample"),
    "medsegdiff_triplanar_guided": ({"guidance_channels": 2}, "sample"),
    "medsegdiff_dice": ({}, "sample"),
    "medsegdiff_triplanar_guided_dice": ({"guidance_channels": 2}, "sample"),
    "medsegdiff_triplanar_guided_dice_shift": ({"guidance_channels": 2}, "sample"),
}
"""Diffusion models of the protocol: ``MedSegDiffUNet`` arguments on top of ``PROTOCOL_NETWORK`` and the
objective (``sample`` = x0 prediction, the sample model's; ``epsilon`` = the paper's; ``v_prediction``).
``medsegdiff_guided`` (the committed sample model's network) also reads the annotator's marks as image channels,
trained with simulated clicks (``medsegdiff.guidance``); without marks they are zeros, so the protocol scores its
automatic result."""

MASK_SCALES: dict[str, float] = {"medsegdiff_scale03": 0.3, "medsegdiff_scale01": 0.1}
"""Variants that diffuse the mask in [-b, b] (``DiffusionConfig.mask_scale``; the others: b = 1)."""
DICE_WEIGHTS: dict[str, float] = {"medsegdiff_dice": 1.0, "medsegdiff_triplanar_guided_dice": 1.0,
                                   "medsegdiff_triplanar_guided_dice_shift": 1.0}
"""Variants trained with MSE + this weight x soft Dice on the predicted mask (``DiffusionConfig.dice_weight``;
the others: MSE alone)."""
VIEWS: dict[str, tuple[int, ...]] = {"medsegdiff_triplanar": (2, 1, 0), "medsegdiff_triplanar_guided": (2, 1, 0),
                                     "medsegdiff_triplanar_guided_dice": (2, 1, 0),
                                     "medsegdiff_triplanar_guided_dice_shift": (2, 1, 0)}
"""Variants trained on slices along several axes of the model grid (2 axial, 1 coronal, 0 sagittal) and applied
along each of them, the ensemble's members shared out over the views (the others: axial only).
``medsegdiff_triplanar_guided`` is the committed sample model's recipe: three views and guidance channels."""
BOUNDARY_SHIFTS: dict[str, float] = {"medsegdiff_triplanar_guided_dice_shift": 2 / 3}
"""Variants trained with the label's boundary moved one voxel out or in with this probability
(``medsegdiff.training.RandBoundaryShiftd``; the others: never)."""

DIFFUSION_MODELS = tuple(VARIANTS)
MODELS = (*DIFFUSION_MODELS, "plain_segmenter", "unet")
EXPERIMENTS = ("medsegdiff_fused_skips", "medsegdiff_eps", "medsegdiff_v", "medsegdiff_guided",
               "medsegdiff_scale03", "medsegdiff_scale01", "medsegdiff_triplanar", "medsegdiff_25d",
               "medsegdiff_triplanar_guided", "medsegdiff_dice", "medsegdiff_triplanar_guided_dice",
               "medsegdiff_triplanar_guided_dice_shift")
"""Issue-10 design experiments: trained only with ``BENCH_EXPERIMENTS=1`` (they share the run's cells)."""
SERVED_RECIPE = "medsegdiff_triplanar_guided_dice"
"""The protocol model whose recipe the committed sample model follows (three views, guidance channels, MSE + soft
Dice: ``medsegdiff.sample_model.SAMPLE_DICE_WEIGHT``; until stop 29 the same with MSE alone,
``medsegdiff_triplanar_guided``)."""
INTERACTIVE_MODELS = ("medsegdiff", SERVED_RECIPE)
"""Models whose networks of each fold (seeds ``0..interactive_seeds - 1``) the interactive bench refines with
(RePaint only, axial; the committed model's recipe: RePaint + guidance, automatic label over three views)."""


MEMBERS_PER_VIEW = 2
"""Members per view of a network of several views: the infer task's default of 6 over three views (every view as
many members; the 2 / 2 / 1 share of 5 measured worse on the same networks, README)."""


def eval_members(view_count: int, members: int) -> int:
    """Members the bench samples a network of ``view_count`` views with: ``members`` (the protocol's
    ``eval_members``) for one view; :data:`MEMBERS_PER_VIEW` per view for several, as the infer task's default."""
    return members if view_count == 1 else MEMBERS_PER_VIEW * view_count


def guided(model: str) -> bool:
    """Whether ``model``'s network reads the annotator's marks as guidance channels."""
    return bool(VARIANTS.get(model, ({}, ""))[0].get("guidance_channels"))


def protocol_models(experiments: bool) -> tuple[str, ...]:
    """The models of a protocol run: the baselines and ablations, plus the design experiments if asked."""
    return tuple(m for m in MODELS if experiments or m not in EXPERIMENTS)
LEARNING_RATE = 1e-3
BATCH_SIZE = 8


def build(model: str, seed: int) -> nn.Module:
    """A freshly initialised network for ``model`` (weights from ``torch.manual_seed(seed)``)."""
    torch.manual_seed(seed)
    if model in VARIANTS:
        return MedSegDiffUNet(**{**PROTOCOL_NETWORK, **VARIANTS[model][0]})
    if model == "plain_segmenter":
        return PlainSegmenter(MedSegDiffUNet(**PROTOCOL_NETWORK))
    if model == "unet":
        target = count_parameters(MedSegDiffUNet(**PROTOCOL_NETWORK))
        torch.manual_seed(seed)
        return size_matched_unet(target, num_classes=1, dropout=0.2)
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def diffusion_config(model: str) -> DiffusionConfig:
    """The sample model's diffusion settings with the variant's objective (the plain segmenter: MSE on x0)."""
    prediction_type = VARIANTS[model][1] if model in VARIANTS else "sample"
    return dataclasses.replace(sample_diffusion_config(), prediction_type=prediction_type,
                               mask_scale=MASK_SCALES.get(model, 1.0), dice_weight=DICE_WEIGHTS.get(model, 0.0))


def context_slices(model: str) -> int:
    """Neighbour slices per side a 2.5D variant reads as image channels (0: plain 2D)."""
    return int(VARIANTS[model][0].get("context_slices", 0)) if model in VARIANTS else 0


def with_context(stack: np.ndarray, picks: Sequence[int], k: int) -> np.ndarray:
    """Slices ``picks`` of a (n, 1, S, S) slice stack, each with its ``k`` neighbours per side as channels
    (edges repeat, as the infer task's ``slice_stack``): (len(picks), 2k + 1, S, S)."""
    return slice_stack(torch.from_numpy(stack[:, 0])[None], list(picks), k).numpy()


def views(model: str) -> tuple[int, ...]:
    """The slice axes ``model`` trains and predicts along (``VIEWS``; axial only by default)."""
    return VIEWS.get(model, (AXIAL,))


class NetworkCalls:
    """Counts the forward calls of a network (and the images they carried) with a forward hook."""

    def __init__(self, network: nn.Module) -> None:
        self.calls = 0
        self.images = 0
        self._handle = network.register_forward_hook(self._count)

    def _count(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0]) if args else 0

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> NetworkCalls:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Trained:
    network: nn.Module
    stats: dict[str, Any]


def train(
    model: str, network: nn.Module, images: np.ndarray, labels: np.ndarray, iterations: int, seed: int,
    device: torch.device, validate: Callable[[nn.Module], float] | None = None, val_every: int = 0,
    extra_augmentations: Sequence[Callable] = (),
) -> Trained:
    """Train for ``iterations`` (cosine schedule); ``validate(network)`` every ``val_every`` iterations gives the
    curve (its time is not counted in ``seconds``; it never picks a checkpoint: the last iterate is kept)."""
    curve: list[dict[str, float]] = []
    spent = [0.0]

    def callback(iteration: int, loss: float) -> None:
        if validate is not None and val_every and (iteration % val_every == 0 or iteration == iterations):
            start = time.perf_counter()
            network.eval()
            curve.append({"iteration": iteration, "loss": loss, "val_dice": validate(network)})
            network.train()
            spent[0] += time.perf_counter() - start

    if model in BOUNDARY_SHIFTS:
        extra_augmentations = [*extra_augmentations, RandBoundaryShiftd(prob=BOUNDARY_SHIFTS[model])]
    start = time.perf_counter()
    if model == "unet":
        losses = train_segmenter(network, images, labels, iterations, BATCH_SIZE, LEARNING_RATE, seed, device, callback)
    else:
        losses = train_on_arrays(
            network, diffusion_config(model), images, labels, iterations, batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE, lr_schedule="cosine", seed=seed, device=device, log_every=0, callback=callback,
            extra_augmentations=extra_augmentations,
        )
    network.eval()
    stats = {
        "iterations": len(losses), "seconds": round(time.perf_counter() - start - spent[0], 1),
        "final_loss": float(np.mean(losses[-10:])), "parameters": count_parameters(network), "curve": curve,
    }
    return Trained(network, stats)


@torch.no_grad()
def predict(
    model: str, network: nn.Module, volume: GridVolume, z: list[int] | None = None, steps: int = 10,
    members: int = 5, seed: int = 0, mc_passes: int = 0, slice_batch: int = 4, eta: float = 0.0,
) -> dict[str, Any]:
    """Member class distributions (N, K, H, W, Z') on the model grid for the axial slices ``z`` (all if None).

    Diffusion models: DDIM ``steps`` x ``members`` (``EnsembleSampler``, members batched; ``eta``: its
    stochasticity). A model of several ``VIEWS`` runs along each of them on the whole volume (``z`` given: axial
    only), the members shared out as the infer task shares them (:func:`~medsegdiff.inferer.member_shares`: 5 over
    three views run 2 / 2 / 1), each member's noise from its index. Plain segmenter and
    U-Net: one pass (N = 1); ``mc_passes`` > 1 turns the U-Net into MC-dropout with that many passes. Also
    returns ``seconds``, ``nfe`` (network calls counted by a forward hook) and ``members_per_view``.
    """
    device = next(network.parameters()).device
    axes = views(model) if z is None else (AXIAL,)
    shares = member_shares(members, len(axes))
    context = context_slices(model)
    grids = []
    start = time.perf_counter()
    with NetworkCalls(network) as counter:
        for axis, share in zip(axes, shares):
            if not share:
                continue
            images, _ = volume.view_slices(axis)
            picks = range(len(images)) if z is None else z
            images = with_context(images, picks, context) if context else images[list(picks)]
            parts = []
            for first in range(0, len(images), slice_batch):
                x = torch.from_numpy(images[first : first + slice_batch]).to(device)
                if model in DIFFUSION_MODELS:
                    sampler = EnsembleSampler(diffusion_config(model), "ddim", steps, members, eta=eta)
                    ids = list(range(first, first + len(x)))
                    dist = diffusion_member_distributions(
                        sampler(network, x, seed=seed, sample_ids=ids, members=share).member_probs)
                elif model == "plain_segmenter":
                    dist = class_distribution(network.probabilities(x))[None]
                elif mc_passes > 1:
                    dist = mc_dropout_distributions(network, x, mc_passes, seed=seed)
                else:
                    dist = softmax_distributions(network, x)
                parts.append(dist.float().cpu())
            stacked = torch.cat(parts, dim=1).permute(0, 2, 3, 4, 1).numpy()  # (N, K, S, S, slices)
            grids.append(stacked if axis == AXIAL else unview_stack(stacked, axis, volume.image.shape))
    seconds = time.perf_counter() - start
    return {"members": np.concatenate(grids), "seconds": seconds, "nfe": counter.calls,
            "members_per_view": [len(share) for share in shares]}
