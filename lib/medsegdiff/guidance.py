"""Guidance channels: the annotator's marks as extra image channels that the network is trained to follow.

A network built with ``guidance_channels=2`` takes, after its image channels, one channel of foreground marks
and one of background marks (1 on a marked voxel, else 0). :class:`~medsegdiff.sampling.EnsembleSampler`
appends them from the request's :class:`~medsegdiff.interaction.KnownRegion` (zeros without marks), on top of
the RePaint-style conditioning every network gets. Training learns the path from simulated clicks
(:class:`SimulatedClicksd`, as DeepEdit trains its click channels): none in half of the samples (the automatic
case), else a few discs drawn from the reference label — foreground clicks inside it (marking the class under
the click), background clicks half in the band just outside its boundary (where boundary errors are) and half on
other tissue outside it (brighter than a fifth of the image's maximum: where islands such as the neck are).
:class:`ErrorClicks` then replaces the clicks of some samples by one click on the network's own error, as
DeepEdit and nnInteractive train: the network's automatic label of the sample (one DDIM step from noise, as the
infer task samples it, without marks) is compared with the reference and the click goes to the centre of the
largest error component (:func:`largest_error_click`, the rule the interactive bench clicks by), so the network
learns to correct the region around a click rather than only to copy the marked voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.engines import PrepareBatch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage
from torch import nn

from .diffusion import DiffusionConfig, diffusion_to_probabilities
from .fusion import probabilities_to_labels
from .interaction import UNKNOWN, KnownRegion, click_balls
from .schedulers import RespacedScheduler

__all__ = [
    "GUIDANCE_CHANNELS", "guidance_maps", "depth_inside", "largest_error_click", "SimulatedClicksd", "ErrorClicks", "ErrorClicksPrepareBatch",
]

GUIDANCE_CHANNELS = 2
"""Foreground marks, background marks."""


def guidance_maps(known: KnownRegion | None, image: torch.Tensor) -> torch.Tensor:
    """The guidance channels (B, 2, *spatial) for a batch of images (B, C, *spatial); zeros without marks.

    They hold the marks and, where unmarked, the hints (:meth:`~medsegdiff.interaction.KnownRegion.guidance`).
    """
    shape = (image.shape[0], GUIDANCE_CHANNELS, *image.shape[2:])
    if known is None:
        return torch.zeros(shape, dtype=image.dtype, device=image.device)
    if tuple(known.labels.shape[2:]) != tuple(image.shape[2:]) or known.labels.shape[0] != image.shape[0]:
        raise ValueError(f"marks of shape {list(known.labels.shape)} for images of shape {list(image.shape)}")
    labels = known.guidance().to(image.device)
    return torch.cat([labels > 0, labels == 0], dim=1).to(image.dtype)


def depth_inside(region: np.ndarray) -> np.ndarray:
    """Distance (voxels) of each voxel of the bool mask ``region`` to the nearest voxel outside it, the grid's
    border counting as outside (0 outside ``region``; 1 for a one-voxel-thick rim)."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim]


def largest_error_click(prediction: np.ndarray, reference: np.ndarray) -> tuple[tuple[int, ...], int] | None:
    """(voxel, reference class) of a corrective click: the centre of the largest error component; None if none.

    The centre is the voxel deepest inside the component (maximum of its distance transform, the grid's border
    counting as a boundary, as the CVPR 2025 interactive challenge pads the component with background), ties
    going to the deepest voxel nearest the component's centroid.
    """
    errors = np.asarray(prediction) != np.asarray(reference)
    components, count = ndimage.label(errors)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(errors, components, range(1, count + 1))))
    region = components == largest
    distance = depth_inside(region)
    deepest = np.argwhere(distance == distance.max())
    centroid = np.argwhere(region).mean(axis=0)
    voxel = tuple(int(v) for v in deepest[np.argmin(((deepest - centroid) ** 2).sum(axis=1))])
    return voxel, int(np.asarray(reference)[voxel])


class SimulatedClicksd(Randomizable, MapTransform):
    """Append simulated click channels to ``image`` (C, *spatial) from ``label`` (1, *spatial).

    Args:
        max_clicks: at most this many clicks of each kind (the count is drawn from 1..max_clicks).
        radius: disc radius of a click in voxels (drawing it from 1-3 instead measured no better: 1 seed, the
            interactive bench's clicks on held-out heads).
        prob_none: probability of a sample without any click.
        band: width in voxels of the band outside the label's boundary where half the background clicks fall.
    """

    def __init__(self, max_clicks: int = 3, radius: int = 1, prob_none: float = 0.5, band: int = 3) -> None:
        super().__init__(keys=["image", "label"])
        if max_clicks < 1 or radius < 0 or band < 1 or not 0.0 <= prob_none <= 1.0:
            raise ValueError(f"need max_clicks >= 1, radius >= 0, band >= 1, prob_none in [0, 1]; got "
                             f"{max_clicks}, {radius}, {band}, {prob_none}")
        self.max_clicks, self.radius, self.prob_none, self.band = max_clicks, radius, prob_none, band

    def _pick(self, candidates: np.ndarray, count: int) -> list[list[int]]:
        if len(candidates) == 0 or count == 0:
            return []
        rows = self.R.choice(len(candidates), size=min(count, len(candidates)), replace=False)
        return [[int(v) for v in candidates[r]] for r in rows]

    def marks(self, image: np.ndarray, label: np.ndarray) -> torch.Tensor:
        """A marks map (1, *spatial) of the simulated clicks (:data:`~medsegdiff.interaction.UNKNOWN` elsewhere)."""
        marks = torch.full((1, *label.shape), UNKNOWN, dtype=torch.long)
        if self.R.random_sample() < self.prob_none:
            return marks
        inside = label > 0
        near = ndimage.binary_dilation(inside, iterations=self.band) & ~inside
        tissue = (image > 0.2 * image.max()) & ~inside & ~near
        n_fg, n_bg = (int(self.R.randint(1, self.max_clicks + 1)) for _ in range(2))
        foreground = self._pick(np.argwhere(inside), n_fg)
        background = self._pick(np.argwhere(near), (n_bg + 1) // 2) + self._pick(np.argwhere(tissue), n_bg // 2)
        reference = torch.as_tensor(label)
        if background:  # a disc marks only the voxels of the clicked class (a careful annotator's click)
            disc = click_balls(label.shape, background, self.radius)
            marks[0][disc & (reference == 0)] = 0
        for point in foreground:  # a foreground click marks the class under it
            value = int(label[tuple(point)])
            marks[0][click_balls(label.shape, [point], self.radius) & (reference == value)] = value
        return marks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d["image"])
        label = np.asarray(torch.as_tensor(d["label"]).detach().cpu())[0].round().astype(np.int64)
        marks = self.marks(np.asarray(image.detach().cpu()).max(axis=0), label)
        channels = guidance_maps(KnownRegion(marks[None]), image[None].float())[0]
        d["image"] = torch.cat([image.float(), channels.to(image.device)], dim=0)
        return d


class ErrorClicks:
    """Give a share of a training batch one click on the network's own error instead of its simulated clicks.

    For each chosen sample the network labels the image without marks from pure noise in one DDIM step (the
    infer task's automatic label, gradient-free); :func:`largest_error_click` against the reference places a
    disc of ``radius`` voxels, marking only the voxels of the clicked class, and that click replaces the
    sample's guidance channels. Samples whose automatic label is already right keep their simulated clicks.

    Args:
        network: the network being trained (its guidance channels are the image's last two).
        diffusion: the diffusion it is trained with.
        prob: share of the samples that get an error click.
        radius: disc radius in voxels.
        seed: seeds which samples are chosen and the noise of their automatic label.
    """

    def __init__(self, network: nn.Module, diffusion: DiffusionConfig, prob: float = 0.5, radius: int = 1, seed: int = 0) -> None:
        if not 0.0 <= prob <= 1.0 or radius < 0:
            raise ValueError(f"need prob in [0, 1] and radius >= 0, got {prob} and {radius}")
        self.network, self.prob, self.radius = network, prob, radius
        self.scheduler = RespacedScheduler(diffusion, "ddim", 1)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def automatic_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The network's label (B, 1, *spatial) of images without marks: one DDIM step from pure noise."""
        device = next(self.network.parameters()).device
        plain = images.float().clone()
        plain[:, -GUIDANCE_CHANNELS:] = 0.0
        t = int(self.scheduler.timesteps[0])
        x = torch.randn((len(images), self.network.out_channels, *images.shape[2:]), generator=self.generator).to(device)
        output = self.network(x, torch.full((len(images),), t, device=device), context=plain.to(device))
        x0, _ = self.scheduler.split(output.float(), t, x)
        probs = diffusion_to_probabilities(x0, self.network.config["background_channel"], scale=self.scheduler.mask_scale)
        return probabilities_to_labels(probs).cpu()

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch (``image`` with guidance channels, ``label``) with error clicks for the chosen samples."""
        images, labels = torch.as_tensor(batch["image"]), torch.as_tensor(batch["label"])
        chosen = torch.nonzero(torch.rand(len(images), generator=self.generator) < self.prob).flatten()
        if len(chosen) == 0:
            return dict(batch)
        predicted = self.automatic_labels(images[chosen])
        images = images.clone()
        for row, i in enumerate(chosen.tolist()):
            reference = labels[i, 0].detach().cpu().round().long()
            click = largest_error_click(predicted[row, 0].numpy(), reference.numpy())
            if click is None:
                continue
            voxel, value = click
            disc = click_balls(tuple(reference.shape), [voxel], self.radius) & (reference == value)
            channels = images[i, -GUIDANCE_CHANNELS:]
            channels.zero_()
            channels[0 if value > 0 else 1][disc.to(images.device)] = 1.0
        return {**batch, "image": images}


class ErrorClicksPrepareBatch(PrepareBatch):
    """A MONAI engine's ``prepare_batch`` that applies :class:`ErrorClicks` to each batch before ``prepare``."""

    def __init__(self, clicks: ErrorClicks, prepare: PrepareBatch) -> None:
        self.clicks, self.prepare = clicks, prepare

    def __call__(self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any):
        return self.prepare(self.clicks(batchdata), device, non_blocking, **kwargs)
