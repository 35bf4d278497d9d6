"""Ensemble sampling: N reverse-diffusion chains per image, fused into one label with uncertainty.

The members of the ensemble run as one batch per step (one network evaluation per step for all members) or
in chunks of ``member_batch_size`` (chunking bounds memory for large 3D patches). Member m draws
its noise from its own ``torch.Generator`` seeded with ``seed + m``, so each member is reproducible on its own.
The image-only features are computed once per image and reused by every step and member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .device import autocast
from .diffusion import SAMPLERS, DiffusionConfig, diffusion_to_probabilities, make_scheduler, set_sampling_steps
from .fusion import FUSIONS, fuse, probabilities_to_labels
from .uncertainty import member_variance, predictive_entropy

__all__ = ["SegmentationResult", "EnsembleSampler"]


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
        sampler: ``"ddim"`` (deterministic, few steps) or ``"ddpm"`` (ancestral, typically all T steps).
        num_inference_steps: reverse steps per member (1..T).
        num_ensemble: members N (≥ 1).
        fusion: ``"mean"``, ``"vote"`` or ``"staple"``.
        member_batch_size: members per forward pass; ``None`` = all members in one batch.
        eta: DDIM stochasticity (0 = deterministic after the initial noise).
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
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= diffusion.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {diffusion.num_train_timesteps}], got {num_inference_steps!r}"
            )
        if not isinstance(num_ensemble, int) or num_ensemble < 1:
            raise ValueError(f"num_ensemble must be an integer >= 1, got {num_ensemble!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if member_batch_size is not None and member_batch_size < 1:
            raise ValueError(f"member_batch_size must be >= 1 or None, got {member_batch_size!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.diffusion = diffusion
        self.sampler = sampler
        self.num_inference_steps = num_inference_steps
        self.num_ensemble = num_ensemble
        self.fusion = fusion
        self.member_batch_size = member_batch_size or num_ensemble
        self.eta = eta
        self.amp = amp

    @torch.no_grad()
    def __call__(self, network: nn.Module, image: torch.Tensor, seed: int = 0) -> SegmentationResult:
        """Segment a batch of images (B, in_channels, *spatial) with the whole ensemble."""
        member_probs, nfe = self.sample_members(network, image, seed)
        probs = fuse(member_probs, self.fusion)
        mean_probs = member_probs.mean(dim=0)
        return SegmentationResult(
            probs=probs,
            label=probabilities_to_labels(probs),
            entropy=predictive_entropy(mean_probs),
            variance=member_variance(member_probs),
            member_probs=member_probs,
            nfe=nfe,
            member_evaluations=self.num_inference_steps * self.num_ensemble,
        )

    def sample_members(self, network: nn.Module, image: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, int]:
        """Run every member's chain; returns member probabilities (N, B, C, *spatial) and the NFE spent."""
        features = network.encode_image(image)  # image-only part: once per image
        members, nfe = [], 0
        for first in range(0, self.num_ensemble, self.member_batch_size):
            ids = range(first, min(first + self.member_batch_size, self.num_ensemble))
            x0, calls = self.denoise(network, features, tuple(image.shape[2:]), [seed + m for m in ids])
            members.extend(x0.chunk(len(ids)))
            nfe += calls
        return diffusion_to_probabilities(torch.stack(members).float()), nfe

    def denoise(
        self, network: nn.Module, features: torch.Tensor, spatial_shape: tuple[int, ...], seeds: list[int]
    ) -> tuple[torch.Tensor, int]:
        """Reverse diffusion for len(seeds) members batched together (member-major); returns x0 and the NFE."""
        device, batch = features.device, features.shape[0]
        shape = (batch, network.num_classes, *spatial_shape)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        scheduler = make_scheduler(self.diffusion, self.sampler)
        set_sampling_steps(scheduler, self.num_inference_steps, device)
        features = features.repeat(len(seeds), *([1] * (features.ndim - 1)))
        # 1. start every member from its own noise
        x = torch.cat([torch.randn(shape, generator=g, device=device) for g in generators])
        x0 = x
        for t in scheduler.timesteps:
            # 2. one network evaluation for all members of this batch
            with autocast(device, self.amp):
                model_output = network(x, t.expand(x.shape[0]), image_features=features).float()
            # 3. x_t -> x_{t-1}, each member with its own generator
            x, x0 = self._step(scheduler, model_output, int(t), x, generators)
        return x0, len(scheduler.timesteps)

    def _step(self, scheduler, model_output, t, x, generators):
        kwargs = {"eta": self.eta} if self.sampler == "ddim" else {}
        steps = [
            scheduler.step(out, t, sample, generator=g, **kwargs)
            for out, sample, g in zip(model_output.chunk(len(generators)), x.chunk(len(generators)), generators)
        ]
        return torch.cat([s[0] for s in steps]), torch.cat([s[1] for s in steps])
