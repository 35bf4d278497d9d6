"""The MedSegDiff U-Net (Wu et al., arXiv 2211.00611), 2D or 3D through ``spatial_dims``.

The network estimates the diffusion step ε_θ(x_t, I, t) for a noisy mask x_t given the raw image I::

    image I ──conv──► image blocks L0 ─┐(cached once per image)         mask x_t ──conv──► mask blocks L0 (t)
                                       └► fusion L0: m_I + A(m_I, FFParser(m_x)) ◄───────────────┤ skip 0
                  down ► image blocks L1 ► fusion L1 ◄──────────────────────────── down ► mask blocks L1 (t) ┤ skip 1
                  ...                                                                   ...
    bottleneck: E_I + E_x ► Res(t) ► Attention ► Res(t) ► decoder (skips: see ``skip_source``) ► ε / x0 / v

Switches (each measured in the bench, see the README's "differences from the paper"): ``skip_source`` — what
the decoder's skip connections carry (``"mask"``: the mask encoder's features, as in the paper's code;
``"fused"``: mask + fused image features; ``"concat"``: both side by side); ``background_channel`` — diffuse
C + 1 one-hot channels with the background explicit (argmax over all) instead of C foreground channels;
``context_slices`` — k neighbour slices on each side stacked as image channels (2.5D; the image then has
``in_channels * (2k + 1)`` channels); ``guidance_channels`` — the annotator's foreground / background marks
as extra image channels after those (:mod:`medsegdiff.guidance`; the sampler appends them).

Only the level-0 image branch depends on I alone; :meth:`MedSegDiffUNet.encode_image` computes it once per
image and :meth:`forward` reuses it through ``image_features`` across sampling steps and ensemble members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from .blocks import AttentionBlock, AttentiveFusion, Downsample, ImageOnly, ResidualBlock, TimestepEmbedding, Upsample

__all__ = ["MedSegDiffUNet", "SKIP_SOURCES"]

SKIP_SOURCES = ("mask", "fused", "concat")


class MedSegDiffUNet(nn.Module):
    """MedSegDiff step estimator with an image encoder, a mask encoder and a shared decoder.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the image I (e.g. 1 for a T1 scan).
        num_classes: foreground classes C; the mask travels as C channels (one-hot scaled to [-1, 1]).
        spatial_size: the training patch / slice size; sizes the FF-Parser weights (other sizes still work).
        channels: feature channels per level.
        attention_levels: per level, whether the mask encoder and decoder have self-attention.
        num_res_blocks: residual blocks per level in each encoder and the decoder.
        norm_num_groups: GroupNorm groups.
        num_head_channels: channels per attention head.
        time_injection: ``"adagn"`` (scale/shift of the group norm) or ``"add"``.
        use_ff_parser: False ablates the FF-Parser (attentive fusion stays).
        use_fusion: False ablates attentive fusion (and with it the FF-Parser): the image features pass every level
            unchanged and meet the mask features only at the bottleneck.
        skip_source: ``"mask"``, ``"fused"`` or ``"concat"`` (what the decoder skips carry).
        background_channel: diffuse an explicit background channel (C + 1 mask channels).
        context_slices: neighbour slices per side given as extra image channels (2D networks only).
        guidance_channels: 0, or 2 for the marks channels of :mod:`medsegdiff.guidance` (trained with simulated clicks).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        num_classes: int = 1,
        spatial_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 64, 128, 256),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        num_head_channels: int = 32,
        time_injection: str = "adagn",
        use_ff_parser: bool = True,
        use_fusion: bool = True,
        skip_source: str = "mask",
        background_channel: bool = False,
        context_slices: int = 0,
        guidance_channels: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(spatial_size) != spatial_dims:
            raise ValueError(f"spatial_size={tuple(spatial_size)} needs {spatial_dims} entries")
        if len(attention_levels) != len(channels):
            raise ValueError(f"attention_levels has {len(attention_levels)} entries, channels has {len(channels)}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if skip_source not in SKIP_SOURCES:
            raise ValueError(f"skip_source must be one of {SKIP_SOURCES}, got {skip_source!r}")
        if context_slices < 0 or (context_slices and spatial_dims != 2):
            raise ValueError(f"context_slices must be >= 0 and only set for 2D networks, got {context_slices}")
        if guidance_channels not in (0, 2):
            raise ValueError(f"guidance_channels must be 0 or 2 (foreground and background marks), got {guidance_channels}")
        self.config: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "spatial_size": [int(s) for s in spatial_size],
            "channels": [int(c) for c in channels],
            "attention_levels": [bool(a) for a in attention_levels],
            "num_res_blocks": num_res_blocks,
            "norm_num_groups": norm_num_groups,
            "num_head_channels": num_head_channels,
            "time_injection": time_injection,
            "use_ff_parser": use_ff_parser,
            "use_fusion": bool(use_fusion),
            "skip_source": skip_source,
            "background_channel": bool(background_channel),
            "context_slices": int(context_slices),
            "guidance_channels": int(guidance_channels),
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.out_channels = num_classes + 1 if background_channel else num_classes
        self.image_channels = in_channels * (2 * context_slices + 1) + int(guidance_channels)
        self.skip_source = skip_source
        self.divisor = 2 ** (len(channels) - 1)
        conv = Conv[Conv.CONV, spatial_dims]
        emb_dim = 4 * channels[0]
        self.time_embedding = TimestepEmbedding(channels[0], emb_dim)

        def res(cin: int, cout: int, time: bool = True) -> ResidualBlock:
            return ResidualBlock(
                spatial_dims, cin, cout, norm_num_groups, emb_dim if time else None, time_injection=time_injection
            )

        padded = [math.ceil(s / self.divisor) * self.divisor for s in spatial_size]
        self.image_stem = conv(self.image_channels, channels[0], kernel_size=3, padding=1)
        self.mask_stem = conv(self.out_channels, channels[0], kernel_size=3, padding=1)
        self.image_down, self.mask_down = nn.ModuleList(), nn.ModuleList()
        self.image_blocks, self.mask_blocks = nn.ModuleList(), nn.ModuleList()
        self.mask_attention, self.fusions = nn.ModuleList(), nn.ModuleList()
        for level, ch in enumerate(channels):
            prev = channels[max(level - 1, 0)]
            self.image_down.append(Downsample(spatial_dims, prev, ch) if level else nn.Identity())
            self.mask_down.append(Downsample(spatial_dims, prev, ch) if level else nn.Identity())
            self.image_blocks.append(nn.ModuleList([res(ch, ch, time=False) for _ in range(num_res_blocks)]))
            self.mask_blocks.append(nn.ModuleList([res(ch, ch) for _ in range(num_res_blocks)]))
            self.mask_attention.append(AttentionBlock(ch, num_head_channels) if attention_levels[level] else nn.Identity())
            level_size = tuple(s // 2**level for s in padded)
            self.fusions.append(AttentiveFusion(spatial_dims, ch, level_size, use_ff_parser) if use_fusion else ImageOnly())

        deepest = channels[-1]
        self.middle = nn.ModuleList([res(deepest, deepest), AttentionBlock(deepest, num_head_channels), res(deepest, deepest)])

        self.decoder_blocks, self.decoder_attention, self.decoder_up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channels))):
            ch = channels[level]
            skip_ch = 2 * ch if skip_source == "concat" else ch
            blocks = [res(ch + skip_ch, ch)] + [res(ch, ch) for _ in range(num_res_blocks - 1)]
            self.decoder_blocks.append(nn.ModuleList(blocks))
            self.decoder_attention.append(AttentionBlock(ch, num_head_channels) if attention_levels[level] else nn.Identity())
            self.decoder_up.append(Upsample(spatial_dims, ch, channels[level - 1]) if level else nn.Identity())
        self.head = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]), nn.SiLU(), conv(channels[0], self.out_channels, kernel_size=3, padding=1)
        )

    # ------------------------------------------------------------------ helpers
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad every spatial size up to a multiple of 2**(levels-1) (cropped back in forward)."""
        pads: list[int] = []
        for size in reversed(x.shape[2:]):
            pads += [0, (-size) % self.divisor]
        return F.pad(x, pads) if any(pads) else x

    def _check(self, name: str, x: torch.Tensor, channels: int) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"{name} must be (B, C, {'H, W' if self.spatial_dims == 2 else 'H, W, D'}), got {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"{name} has {x.shape[1]} channels, the network expects {channels}")

    def _skip(self, h_mask: torch.Tensor, h_image: torch.Tensor) -> torch.Tensor:
        if self.skip_source == "fused":
            return h_mask + h_image
        if self.skip_source == "concat":
            return torch.cat([h_mask, h_image], dim=1)
        return h_mask

    # ------------------------------------------------------------------ API
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The image-only part (image stem + level-0 image blocks): compute once per image, reuse per step."""
        self._check("image", image, self.image_channels)
        h = self.image_stem(self._pad(image))
        for block in self.image_blocks[0]:
            h = block(h)
        return h

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Estimate ε (or x0 / v, depending on training) for the noisy mask ``x``.

        Args:
            x: noisy mask x_t, (B, out_channels, *spatial).
            timesteps: (B,) integer diffusion steps.
            context: the image I, (B, in_channels, *spatial) (named as in ``monai.inferers.DiffusionInferer``).
            image_features: output of :meth:`encode_image`, to skip recomputing it (then ``context`` is unused).
        """
        self._check("x", x, self.out_channels)
        if image_features is None:
            if context is None:
                raise ValueError("pass the image as context= or its encode_image() output as image_features=")
            image_features = self.encode_image(context)
        spatial = x.shape[2:]
        x = self._pad(x)
        if image_features.shape[0] != x.shape[0] or image_features.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"image features {tuple(image_features.shape)} do not match the noisy mask {tuple(x.shape)}"
            )
        timesteps = timesteps.reshape(-1).expand(x.shape[0])
        # one shared step (sampling): embed it once and broadcast, so every chain's result is independent of the
        # batch it runs in (a GEMM's rounding depends on its row count)
        emb = self.time_embedding(timesteps[:1] if bool((timesteps == timesteps[0]).all()) else timesteps)

        skips = []
        h_mask, h_image = self.mask_stem(x), image_features
        for level in range(len(self.mask_blocks)):
            h_mask = self.mask_down[level](h_mask)
            for block in self.mask_blocks[level]:
                h_mask = block(h_mask, emb)
            h_mask = self.mask_attention[level](h_mask)
            if level:
                h_image = self.image_down[level](h_image)
                for block in self.image_blocks[level]:
                    h_image = block(h_image)
            h_image = self.fusions[level](h_image, h_mask)
            skips.append(self._skip(h_mask, h_image))

        h = h_mask + h_image  # bottleneck: E_t^I + E_t^x
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        for blocks, attention, up in zip(self.decoder_blocks, self.decoder_attention, self.decoder_up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            h = up(attention(h))
        out = self.head(h)
        return out[(slice(None), slice(None), *[slice(0, s) for s in spatial])]
