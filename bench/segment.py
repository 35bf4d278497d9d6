"""Segmenting a volume on the model grid with the diffusion ensemble (``MedSegDiffInferer``), slice by slice."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.fusion import class_distribution
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler

from .grid import GridVolume
from .machine import synchronize

__all__ = ["segment_diffusion"]


def segment_diffusion(
    network: MedSegDiffUNet,
    diffusion: DiffusionConfig,
    volume: GridVolume,
    steps: int,
    members: int,
    z: Sequence[int] | None = None,
    seed: int = 0,
    slice_batch_size: int = 4,
    views: Sequence[int] = (2,),
) -> dict[str, Any]:
    """Run the DDIM ensemble over axial slices with ``MedSegDiffInferer`` (all members batched; a network of
    several ``views`` along each of them, the members shared out).

    Returns:
        ``distribution`` (C+1, H, W, Z') and ``entropy`` (1, H, W, Z') on the model grid for the slices ``z``
        (all when None), plus ``nfe`` and ``seconds``.
    """
    device = next(network.parameters()).device
    sampler = EnsembleSampler(diffusion, "ddim", steps, members, fusion="mean")
    inferer = MedSegDiffInferer(sampler, seed=seed, slice_axis=2, slice_batch_size=slice_batch_size, views=views)
    image = volume.image if z is None else volume.image[:, :, list(z)]
    start = time.perf_counter()
    out = inferer(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device), network)
    synchronize(device)
    seconds = time.perf_counter() - start
    distribution = class_distribution(out["probs"].float())[0]
    return {
        "distribution": distribution.cpu().numpy(),
        "entropy": out["entropy"][0].float().cpu().numpy(),
        "nfe": int(inferer.nfe),
        "seconds": seconds,
    }
