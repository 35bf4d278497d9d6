"""Guidance channels: the annotator's marks as extra image channels that the network is trained to follow.

A network built with ``guidance_channels=2`` takes, after its image channels, one channel of foreground marks
and one of background marks (1 on a marked voxel, else 0). :class:`~medsegdiff.sampling.EnsembleSampler`
appends them from the request's :class:`~medsegdiff.interaction.KnownRegion` (zeros without marks), on top of
the RePaint-style conditioning every network gets. Training learns the path from simulated clicks
(:class:`SimulatedClicksd`, as DeepEdit trains its click channels): none in half of the samples (the automatic
case), else a few discs drawn from the reference label — foreground clicks inside it (marking the class under
the click), background clicks half in the band just outside its boundary (where boundary errors are) and half on
other tissue outside it (brighter than a fifth of the image's maximum: where islands such as the neck are).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from .interaction import UNKNOWN, KnownRegion, click_discs

__all__ = ["GUIDANCE_CHANNELS", "guidance_maps", "SimulatedClicksd"]

GUIDANCE_CHANNELS = 2
"""Foreground marks, background marks."""


def guidance_maps(known: KnownRegion | None, image: torch.Tensor) -> torch.Tensor:
    """The guidance channels (B, 2, *spatial) for a batch of images (B, C, *spatial); zeros without marks."""
    shape = (image.shape[0], GUIDANCE_CHANNELS, *image.shape[2:])
    if known is None:
        return torch.zeros(shape, dtype=image.dtype, device=image.device)
    if tuple(known.labels.shape[2:]) != tuple(image.shape[2:]) or known.labels.shape[0] != image.shape[0]:
        raise ValueError(f"marks of shape {list(known.labels.shape)} for images of shape {list(image.shape)}")
    labels = known.labels.to(image.device)
    return torch.cat([labels > 0, labels == 0], dim=1).to(image.dtype)


class SimulatedClicksd(Randomizable, MapTransform):
    """Append simulated click channels to ``image`` (C, *spatial) from ``label`` (1, *spatial).

    Args:
        max_clicks: at most this many clicks of each kind (the count is drawn from 1..max_clicks).
        radius: disc radius of a click in voxels (the infer task's default ``click_radius`` is 1).
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
            disc = click_discs(label.shape, background, self.radius)
            marks[0][disc & (reference == 0)] = 0
        for point in foreground:  # a foreground click marks the class under it
            value = int(label[tuple(point)])
            marks[0][click_discs(label.shape, [point], self.radius) & (reference == value)] = value
        return marks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d["image"])
        label = np.asarray(torch.as_tensor(d["label"]).detach().cpu())[0].round().astype(np.int64)
        marks = self.marks(np.asarray(image.detach().cpu()).max(axis=0), label)
        channels = guidance_maps(KnownRegion(marks[None]), image[None].float())[0]
        d["image"] = torch.cat([image.float(), channels.to(image.device)], dim=0)
        return d
