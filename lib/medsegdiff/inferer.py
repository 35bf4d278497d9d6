"""Whole-volume inference: a MONAI ``Inferer`` that runs the diffusion ensemble over a 3D volume.

A 2D network runs slice by slice (MONAI ``SliceInferer``, slices batched); a 3D network runs on sliding
windows of its training patch size (MONAI ``SlidingWindowInferer``, Gaussian blending). Both return the fused
probabilities, the label and the uncertainty of the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import convert_to_tensor
from torch import nn

from .fusion import probabilities_to_labels
from .sampling import EnsembleSampler

__all__ = ["MedSegDiffInferer"]


class MedSegDiffInferer(Inferer):
    """Segments a (B, in_channels, H, W, D) volume with an ensemble of diffusion chains.

    Args:
        sampler: the ensemble sampler (steps, members, fusion).
        seed: seed of member 0 (member m uses seed + m).
        slice_axis: spatial axis (0, 1 or 2) a 2D network slides over.
        slice_batch_size: slices per batch for a 2D network.
        roi_size: window size for a 3D network (defaults to the network's training size).
        overlap: sliding-window overlap for a 3D network.
        progress: show a tqdm bar.

    Returns from ``__call__`` a dict with ``probs`` (B, C, …), ``label`` (B, 1, …), ``entropy`` and
    ``variance`` (B, 1, …), plus ``nfe`` (network evaluations per window/slice batch, summed).
    """

    def __init__(
        self,
        sampler: EnsembleSampler,
        seed: int = 0,
        slice_axis: int = 2,
        slice_batch_size: int = 16,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be >= 1, got {slice_batch_size}")
        self.sampler = sampler
        self.seed = seed
        self.slice_axis = slice_axis
        self.slice_batch_size = slice_batch_size
        self.roi_size = roi_size
        self.overlap = overlap
        self.progress = progress
        self.nfe = 0

    def _segment_window(self, network: nn.Module, window: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.sampler(network, window, seed=self.seed)
        self.nfe += result.nfe
        return {"probs": result.probs, "entropy": result.entropy, "variance": result.variance}

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be a (B, C, H, W, D) volume, got shape {tuple(inputs.shape)}")
        self.nfe = 0
        if network.spatial_dims == 2:
            in_plane = [s for axis, s in enumerate(inputs.shape[2:]) if axis != self.slice_axis]
            window_inferer: SlidingWindowInferer = SliceInferer(
                spatial_dim=self.slice_axis,
                roi_size=in_plane,
                sw_batch_size=self.slice_batch_size,
                progress=self.progress,
            )
        else:
            roi = tuple(self.roi_size or network.config["spatial_size"])
            window_inferer = SlidingWindowInferer(
                roi_size=roi, sw_batch_size=1, overlap=self.overlap, mode="gaussian", progress=self.progress
            )
        # plain tensor: MetaTensor's __torch_function__ would slow down every op of every sampling step
        volume = convert_to_tensor(inputs, track_meta=False).float()
        with torch.no_grad():
            out = window_inferer(volume, lambda x: self._segment_window(network, x))
        out["label"] = probabilities_to_labels(out["probs"])
        return out
