"""Ensemble sampling: N reverse-diffusion chains per image, fused into one label with uncertainty.

The members of the ensemble run as one batch per step (one network evaluation per step for all members) or
in chunks of ``member_batch_size`` (chunking bounds memory for large 3D patches). Every (member m, sample j)
chain draws its noise from its own ``torch.Generator`` seeded from ``(seed, m, sample_ids[j])`` only, so a
result does not depend on how slices or members are batched: pass each slice's global index as its sample id.
(The noise is bit-identical; the network's batched matrix products round in the last bit differently for
other batch sizes on CPU, so probabilities agree to ~1e-6 and labels are identical.)
The image-only features are computed once per image and reused by every step and member.

Annotator marks (a :class:`~medsegdiff.interaction.KnownRegion`) condition the chains RePaint-style: before
every network evaluation the marked voxels of x_t are replaced by q(x_t | x0 = the marked mask), using that
chain's own starting noise as ε (no extra random numbers: without marks the result is bit-identical), and the
marked voxels of every member's x̂0 are set to the marked class at the end. A network with guidance channels
(:mod:`medsegdiff.guidance`) also gets the marks as image channels (zeros without marks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .device import autocast
from .diffusion import DiffusionConfig, diffusion_to_probabilities
from .fusion import FUSIONS, fuse, probabilities_to_labels
from .guidance import guidance_maps
from .interaction import KnownRegion
from .schedulers import RespacedScheduler
from .uncertainty import member_variance, predictive_entropy

__all__ = ["SegmentationResult", "EnsembleSampler", "chain_generator"]


def chain_generator(seed: int, member: int, sample_id: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one chain, seeded from (seed, member, sample id) through numpy's ``SeedSequence``."""
    if min(seed, member, sample_id) < 0:
        raise ValueError(f"seed, member and sample id must be >= 0, got {seed}, {member}, {sample_id}")
    state = np.random.SeedSequence([seed, member, sample_id]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


@dataclass
class SegmentationResult:
    """What the sampler returns for a batch of B images.

    Attributes:
        probs: fused foreground probabilities (B, C, *spatial).
        label: integer label map (B, 1, *spatial), 0 = background.
        entropy: predictive entropy of the mean, normalised to [0, 1] (B, 1, *spatial).
        variance: variance across members, mean over classes (B, 1, *spatial).
        member_probs: every member's probabilities (N, B, C, *spatial).
        nfe: network evaluations spent (batched forward passes).
        member_evaluations: nfe counted per member (the cost of running members one by one).
    """

    probs: torch.Tensor
    label: torch.Tensor
    entropy: torch.Tensor
    variance: torch.Tensor
    member_probs: torch.Tensor
    nfe: int
    member_evaluations: int


class EnsembleSampler:
    """Samples an ensemble of segmentations from a trained MedSegDiff network.

    Args:
        diffusion: the diffusion configuration the network was trained with.
        sampler: ``"ddim"`` or ``"ddpm"`` (respaced to ``num_inference_steps``; see :mod:`medsegdiff.schedulers`).
        num_inference_steps: reverse steps per member (1..T).
        num_ensemble: members N (≥ 1).
        fusion: ``"mean"``, ``"vote"`` or ``"staple"``.
        member_batch_size: members per forward pass; ``None`` = all members in one batch.
        eta: DDIM stochasticity in [0, 1] (0 = deterministic after the initial noise).
        amp: float16 autocast on CUDA.
    """

    def __init__(
        self,
        diffusion: DiffusionConfig,
        sampler: str = "ddim",
        num_inference_steps: int = 10,
        num_ensemble: int = 5,
        fusion: str = "mean",
        member_batch_size: int | None = None,
        eta: float = 0.0,
        amp: bool = False,
    ) -> None:
        # validates sampler, steps and eta
        self.scheduler = RespacedScheduler(diffusion, sampler, num_inference_steps, eta)
        if not isinstance(num_ensemble, int) or num_ensemble < 1:
            raise ValueError(f"num_ensemble must be an integer >= 1, got {num_ensemble!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if member_batch_size is not None and member_batch_size < 1:
            raise ValueError(f"member_batch_size must be >= 1 or None, got {member_batch_size!r}")
        self.diffusion = diffusion
        self.sampler = sampler
        self.num_inference_steps = num_inference_steps
        self.num_ensemble = num_ensemble
        self.fusion = fusion
        self.member_batch_size = member_batch_size or num_ensemble
        self.eta = eta
        self.amp = amp

    @torch.no_grad()
    def __call__(
        self,
        network: nn.Module,
        image: torch.Tensor,
        seed: int = 0,
        sample_ids: Sequence[int] | None = None,
        known: KnownRegion | None = None,
        members: Sequence[int] | None = None,
    ) -> SegmentationResult:
        """Segment a batch of images (B, in_channels, *spatial) with the whole ensemble.

        Args:
            sample_ids: one id per image (e.g. the global slice index) that seeds its noise; default 0..B-1.
            known: annotator marks the chains must respect (``None`` or empty: plain sampling).
            members: the member indices to run (their noise derives from them); default all, 0..N-1.
        """
        known = None if known is None or known.is_empty() else known
        member_probs, nfe = self.sample_members(network, image, seed, sample_ids, known, members)
        probs = fuse(member_probs, self.fusion)
        if known is not None:  # STAPLE or a vote need not give exactly the class every member has
            probs = torch.where(known.mask.to(probs.device), known.probabilities(probs.shape[1]).to(probs), probs)
        return SegmentationResult(
            probs=probs,
            label=probabilities_to_labels(probs),
            entropy=predictive_entropy(member_probs.mean(dim=0)),
            variance=member_variance(member_probs),
            member_probs=member_probs,
            nfe=nfe,
            member_evaluations=self.num_inference_steps * len(member_probs),
        )

    def sample_members(
        self,
        network: nn.Module,
        image: torch.Tensor,
        seed: int = 0,
        sample_ids: Sequence[int] | None = None,
        known: KnownRegion | None = None,
        members: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Run every member's chain (or those of ``members``); returns member probabilities (N, B, C, *spatial)
        and the NFE spent."""
        ids = list(range(image.shape[0])) if sample_ids is None else [int(i) for i in sample_ids]
        if len(ids) != image.shape[0]:
            raise ValueError(f"{len(ids)} sample ids for a batch of {image.shape[0]} images")
        config = getattr(network, "config", {})
        if config.get("guidance_channels"):  # a guided network also reads the marks as image channels
            image = torch.cat([image, guidance_maps(known, image)], dim=1)
        features = network.encode_image(image)  # image-only part: once per image
        background = bool(config.get("background_channel", False))
        scale = self.diffusion.mask_scale
        known_x0 = None if known is None else known.target(network.num_classes, background, scale).to(image.device)
        chosen = list(range(self.num_ensemble)) if members is None else [int(m) for m in members]
        if not chosen or min(chosen) < 0:
            raise ValueError(f"members must be non-negative member indices, got {members!r}")
        outputs, nfe = [], 0
        for first in range(0, len(chosen), self.member_batch_size):
            chunk = chosen[first : first + self.member_batch_size]
            x0, calls = self.denoise(network, features, tuple(image.shape[2:]), seed, chunk, ids, known_x0)
            outputs.extend(x0.chunk(len(chunk)))
            nfe += calls
        return diffusion_to_probabilities(torch.stack(outputs).float(), background, dim=2, scale=scale), nfe

    def denoise(
        self,
        network: nn.Module,
        features: torch.Tensor,
        spatial_shape: tuple[int, ...],
        seed: int,
        members: list[int],
        sample_ids: list[int],
        known_x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Reverse diffusion for ``members`` batched together (member-major); returns x0 and the NFE.

        Args:
            known_x0: (B, channels, *spatial) marked mask in diffusion space, NaN where unmarked; ``None``: no marks.
        """
        device = features.device
        shape = (network.out_channels, *spatial_shape)
        generators = [chain_generator(seed, m, j, device) for m in members for j in sample_ids]
        features = features.repeat(len(members), *([1] * (features.ndim - 1)))

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])

        scheduler = self.scheduler
        x = noise()  # 1. every chain starts from its own noise
        x0, start_noise = x, x
        if known_x0 is not None:
            known_x0 = known_x0.repeat(len(members), *([1] * (known_x0.ndim - 1)))
            marked = ~known_x0.isnan()
        for index, t in enumerate(scheduler.timesteps.tolist()):
            if known_x0 is not None:  # 2. marked voxels: q(x_t | marked mask), with the chain's own noise as ε
                x = torch.where(marked, scheduler.add_noise(known_x0, start_noise, t), x)
            # 3. one network evaluation for all chains of this batch
            with autocast(device, self.amp):
                model_output = network(x, torch.full((x.shape[0],), t, device=device), image_features=features)
            # 4. x_t -> x_prev (fresh noise from each chain's own generator when the sampler is stochastic)
            x, x0 = scheduler.step(model_output.float(), index, x, noise() if scheduler.stochastic else None)
        if known_x0 is not None:  # 5. the marked voxels carry the marked class
            x0 = torch.where(marked, known_x0, x0)
        return x0, len(scheduler.timesteps)
