"""Reverse-diffusion schedulers over any subsequence of the training steps: DDIM (with ``eta``) and respaced DDPM.

MONAI's ``DDPMScheduler.step`` uses the coefficients of a one-step move t → t−1, and its ``DDIMScheduler.step``
assumes a stride of T // k; both are wrong for other spacings. These schedulers take the noise schedule
(ᾱ_t) from MONAI and compute every update from the pair of steps actually visited:

* visited steps: ``round(linspace(T−1, 0, k))`` — the first from pure noise, the last the lowest-noise step 0,
  for every k in 1..T (k = 1 predicts x0 from t = T−1 directly);
* respaced DDPM (Nichol & Dhariwal 2021): β'_t = 1 − ᾱ_t / ᾱ_prev for the visited pair, then the usual
  posterior q(x_prev | x_t, x̂0) with variance β'_t (1 − ᾱ_prev) / (1 − ᾱ_t);
* DDIM (Song et al. 2021): x_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z with
  σ = eta · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev); eta = 0 is deterministic, eta = 1 equals DDPM.

Schedulers never hold the network and draw no random numbers: the caller passes the noise ``z``.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler

from .diffusion import SAMPLERS, DiffusionConfig

__all__ = ["sampling_timesteps", "RespacedScheduler"]


def sampling_timesteps(num_train_timesteps: int, num_inference_steps: int) -> torch.Tensor:
    """The k visited steps, descending from T−1 to 0 (k = 1: just T−1)."""
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be an integer in [1, {num_train_timesteps}], got {num_inference_steps!r}"
        )
    steps = torch.linspace(num_train_timesteps - 1, 0, num_inference_steps, dtype=torch.float64).round().long()
    return steps


class RespacedScheduler:
    """One reverse update per visited step, for ``sampler`` ``"ddim"`` or ``"ddpm"``.

    Args:
        config: the diffusion the network was trained with (T, beta schedule, prediction type).
        sampler: ``"ddim"`` or ``"ddpm"`` (respaced when ``num_inference_steps`` < T).
        num_inference_steps: k, network evaluations per chain (1..T).
        eta: DDIM stochasticity in [0, 1] (ignored by DDPM, which is always stochastic).
        clip_sample: clip the x0 estimate to the mask's range, [-mask_scale, mask_scale].
    """

    def __init__(
        self,
        config: DiffusionConfig,
        sampler: str = "ddim",
        num_inference_steps: int = 10,
        eta: float = 0.0,
        clip_sample: bool = True,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        base = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, schedule=config.schedule)
        self.alphas_cumprod = base.alphas_cumprod.double()
        self.timesteps = sampling_timesteps(config.num_train_timesteps, num_inference_steps)
        self.sampler = sampler
        self.eta = float(eta)
        self.prediction_type = config.prediction_type
        self.clip_sample = clip_sample
        self.mask_scale = float(config.mask_scale)

    @property
    def stochastic(self) -> bool:
        """Whether :meth:`step` uses its noise argument."""
        return self.sampler == "ddpm" or self.eta > 0

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t; ᾱ_{-1} = 1 (the clean mask)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def previous(self, index: int) -> int:
        """The step after visited step ``index`` (−1 after the last)."""
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """A sample of the forward process q(x_t | x0) = √ᾱ_t x0 + √(1 − ᾱ_t) ε with ε = ``noise``."""
        a = self.alpha_bar(t)
        return a**0.5 * x0 + (1.0 - a) ** 0.5 * noise

    def split(self, model_output: torch.Tensor, t: int, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) from the network output at step t, x̂0 clipped and ε̂ made consistent with it."""
        a = self.alpha_bar(t)
        sa, sb = a**0.5, (1.0 - a) ** 0.5
        if self.prediction_type == "epsilon":
            x0 = (sample - sb * model_output) / sa
        elif self.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = sa * sample - sb * model_output
        if self.clip_sample:
            x0 = x0.clamp(-self.mask_scale, self.mask_scale)
        eps = (sample - sa * x0) / max(sb, 1e-12)
        return x0, eps

    def ddpm_coefficients(self, t: int, prev: int) -> tuple[float, float, float]:
        """(coefficient of x̂0, coefficient of x_t, variance) of the respaced posterior q(x_prev | x_t, x̂0)."""
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(prev)
        beta = 1.0 - a_t / a_prev
        c0 = a_prev**0.5 * beta / (1.0 - a_t)
        ct = (1.0 - beta) ** 0.5 * (1.0 - a_prev) / (1.0 - a_t)
        return c0, ct, beta * (1.0 - a_prev) / (1.0 - a_t)

    def ddim_sigma(self, t: int, prev: int) -> float:
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(prev)
        return self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5

    def step(
        self, model_output: torch.Tensor, index: int, sample: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move from visited step ``index`` to the next; returns (x_prev, x̂0).

        Args:
            model_output: the network's output at ``timesteps[index]``.
            index: position in :attr:`timesteps`.
            sample: x_t.
            noise: standard normal noise of ``sample``'s shape (needed when :attr:`stochastic`).
        """
        t, prev = int(self.timesteps[index]), self.previous(index)
        x0, eps = self.split(model_output, t, sample)
        if prev < 0:
            return x0, x0
        if self.sampler == "ddpm":
            c0, ct, variance = self.ddpm_coefficients(t, prev)
            mean, sigma = c0 * x0 + ct * sample, variance**0.5
        else:
            sigma = self.ddim_sigma(t, prev)
            a_prev = self.alpha_bar(prev)
            mean = a_prev**0.5 * x0 + max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            if noise is None:
                raise ValueError(f"{self.sampler} with eta={self.eta} needs noise for step {t} -> {prev}")
            mean = mean + sigma * noise
        return mean, x0
