"""Building blocks of the MedSegDiff U-Net that MONAI does not ship.

Everything here is ``spatial_dims``-generic (2D or 3D) and built from MONAI's layer factories. MONAI's own
pieces are reused where they match the design: the sinusoidal timestep embedding
(:func:`monai.networks.nets.diffusion_model_unet.get_timestep_embedding`) and the pre-norm transformer block
(:class:`monai.networks.blocks.TransformerBlock`: LayerNorm → multi-head attention → residual → MLP → residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.layers.factories import Conv
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

__all__ = [
    "TimestepEmbedding",
    "ResidualBlock",
    "AttentionBlock",
    "FFParser",
    "ChannelLayerNorm",
    "AttentiveFusion",
    "attentive_fusion",
    "Downsample",
    "Upsample",
]

TIME_INJECTIONS = ("add", "adagn")


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the diffusion step t → Linear → SiLU → Linear, shared by all blocks.

    Args:
        base_channels: size of the sinusoidal embedding.
        embedding_dim: size of the output embedding.
    """

    def __init__(self, base_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.mlp = nn.Sequential(nn.Linear(base_channels, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(get_timestep_embedding(timesteps, self.base_channels))


class ResidualBlock(nn.Module):
    """conv → GroupNorm → SiLU → conv → GroupNorm, with an optional time embedding and residual connection.

    The time embedding enters either by addition after the first normalisation (``"add"``) or as the
    scale/shift of the second group norm (``"adagn"``, adaptive group norm). With ``residual=False`` this is the
    plain conv block.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        norm_num_groups: groups of both GroupNorm layers (must divide ``out_channels``).
        embedding_dim: size of the time embedding, ``None`` for a block that does not see t.
        time_injection: ``"add"`` or ``"adagn"``.
        residual: add the (1x1-projected) input to the output.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm_num_groups: int,
        embedding_dim: int | None = None,
        time_injection: str = "adagn",
        residual: bool = True,
    ) -> None:
        super().__init__()
        if time_injection not in TIME_INJECTIONS:
            raise ValueError(f"time_injection must be one of {TIME_INJECTIONS}, got {time_injection!r}")
        if out_channels % norm_num_groups:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide out_channels={out_channels}")
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(norm_num_groups, out_channels)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels)
        self.time_injection = time_injection
        self.time_proj = None
        if embedding_dim is not None:
            factor = 2 if time_injection == "adagn" else 1
            self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(embedding_dim, factor * out_channels))
        self.residual = residual
        self.skip = (
            conv(in_channels, out_channels, kernel_size=1)
            if residual and in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        t = None
        if self.time_proj is not None:
            if emb is None:
                raise ValueError("this block was built with a time embedding; pass emb")
            t = self.time_proj(emb).reshape(emb.shape[0], -1, *([1] * (x.ndim - 2)))
            if self.time_injection == "add":
                h = h + t
        h = self.norm2(self.conv2(F.silu(h)))
        if t is not None and self.time_injection == "adagn":
            scale, shift = t.chunk(2, dim=1)
            h = h * (1 + scale) + shift
        if self.residual:
            h = h + self.skip(x)
        return F.silu(h)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels of a feature map (MONAI ``TransformerBlock`` on flattened tokens).

    Args:
        channels: feature channels (token size).
        num_head_channels: channels per attention head.
    """

    def __init__(self, channels: int, num_head_channels: int = 32) -> None:
        super().__init__()
        num_heads = max(1, channels // num_head_channels)
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible into {num_heads} heads")
        self.transformer = TransformerBlock(hidden_size=channels, mlp_dim=2 * channels, num_heads=num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        return self.transformer(tokens).transpose(1, 2).reshape(b, c, *spatial)


class FFParser(nn.Module):
    """Frequency-domain feature parser (MedSegDiff): a learnable complex weight on the FFT of the features.

    ``y = iFFT(W ⊙ FFT(x))`` over all spatial dims (real FFT). ``W`` starts at 1 + 0j, so the block is the
    identity at initialisation. ``W`` belongs to the feature-map size given at construction; a feature map
    of another size gets ``W`` resampled in frequency space (linear interpolation of the real and imaginary
    parts onto the new frequency grid), so any input size works.

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels.
        spatial_size: feature-map size the weight is learnt at.
    """

    def __init__(self, spatial_dims: int, channels: int, spatial_size: tuple[int, ...]) -> None:
        super().__init__()
        if len(spatial_size) != spatial_dims:
            raise ValueError(f"spatial_size {tuple(spatial_size)} does not have spatial_dims={spatial_dims} entries")
        freq_shape = (*spatial_size[:-1], spatial_size[-1] // 2 + 1)
        weight = torch.zeros(channels, *freq_shape, 2)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight)
        self.spatial_dims = spatial_dims

    def complex_weight(self, freq_shape: tuple[int, ...]) -> torch.Tensor:
        """The complex weight on a frequency grid of ``freq_shape`` (resampled when it differs)."""
        w = self.weight
        if tuple(w.shape[1:-1]) != tuple(freq_shape):
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            parts = w.movedim(-1, 0)  # (2, C, *freq)
            parts = F.interpolate(parts, size=tuple(freq_shape), mode=mode, align_corners=True)
            w = parts.movedim(0, -1)
        return torch.view_as_complex(w.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        spectrum = torch.fft.rfftn(x.float(), dim=dims, norm="ortho")
        spectrum = spectrum * self.complex_weight(tuple(spectrum.shape[2:]))
        return torch.fft.irfftn(spectrum, s=x.shape[2:], dim=dims, norm="ortho").to(x.dtype)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, *spatial) tensor, at every voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def attentive_fusion(
    image_features: torch.Tensor, normed_image: torch.Tensor, normed_mask: torch.Tensor
) -> torch.Tensor:
    """Paper Eq. 3: A(m_I, m_x) = (LN(m_I) ⊗ LN(m_x)) ⊗ m_I, ⊗ element-wise, given the normalised inputs."""
    return (normed_image * normed_mask) * image_features


class AttentiveFusion(nn.Module):
    """Dynamic conditional encoding of one level: FF-Parser on the mask features, then attentive fusion.

    Returns the enriched image features ``m_I + A(m_I, FFParser(m_x))`` (the residual keeps the image
    signal when the attention map is small, as at initialisation).

    Args:
        spatial_dims: 2 or 3.
        channels: channels of both feature maps.
        spatial_size: feature-map size at this level (sizes the FF-Parser weight).
        use_ff_parser: set False to ablate the FF-Parser.
    """

    def __init__(self, spatial_dims: int, channels: int, spatial_size: tuple[int, ...], use_ff_parser: bool = True):
        super().__init__()
        self.ff_parser = FFParser(spatial_dims, channels, spatial_size) if use_ff_parser else nn.Identity()
        self.norm_image = ChannelLayerNorm(channels)
        self.norm_mask = ChannelLayerNorm(channels)

    def forward(self, image_features: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        parsed = self.ff_parser(mask_features)
        fused = attentive_fusion(image_features, self.norm_image(image_features), self.norm_mask(parsed))
        return image_features + fused


class ImageOnly(nn.Module):
    """Fusion switched off: hands the image features on untouched (the mask features are ignored)."""

    def forward(self, image_features: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        return image_features


class Downsample(nn.Module):
    """Strided 3x3 convolution halving every spatial size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3x3 convolution."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
