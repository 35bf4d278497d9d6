"""Transforms shared by inference, training and scoring, so all three see the same voxels.

Pre-processing (the default model was trained this way, see ``medsegdiff.sample_data.brain_slices_2d``):
load (nibabel for NIfTI) → channel first → orient to RAS → ``normalize_intensity`` on the native grid →
resample to the model spacing (3 mm) → pad to at least the training slice / patch size.
Results go back to the grid of the image that was sent with :class:`ToOriginalGridd`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Randomizable,
    RandCropByPosNegLabeld,
    ResizeWithPadOrCropd,
    SpatialPadd,
    SpatialResample,
    Spacingd,
    SqueezeDimd,
)
from monai.utils import convert_to_dst_type

from .fusion import probabilities_to_labels
from .guidance import SimulatedClicksd
from .partial_resample import image_box, resample_into
from .sample_data import normalize_intensity
from .training import segmentation_augmentations
from .windows import region_box

__all__ = [
    "NormalizeIntensityd",
    "ProbabilitiesToLabelsd",
    "RemapLabelsd",
    "ToOriginalGridd",
    "inference_transforms",
    "volume_transforms",
    "min_volume_size",
    "sample_transforms",
    "SlabToChannelsd",
    "RandSliceViewd",
]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class NormalizeIntensityd(MapTransform):
    """``medsegdiff.sample_data.normalize_intensity`` per channel (percentile clip, scale to [0, 1]); keeps metadata."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
            normalized = np.stack([normalize_intensity(channel) for channel in arr])
            d[key] = convert_to_dst_type(normalized, img, dtype=torch.float32)[0]
        return d


class RemapLabelsd(MapTransform):
    """Label values → class indices 1..C in the order of ``label_values``; any other value → background.

    With one class every nonzero value is foreground (masks saved as 255 still train).
    """

    def __init__(self, keys: KeysCollection, label_values: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_values = [int(v) for v in label_values]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if len(self.label_values) == 1:
                out = (label != 0).to(torch.float32)
            else:
                out = torch.zeros_like(label, dtype=torch.float32)
                for index, value in enumerate(self.label_values, start=1):
                    out[label == value] = index
            d[key] = convert_to_dst_type(out, d[key], dtype=torch.float32)[0]
        return d


class ToOriginalGridd(MapTransform):
    """Resample model-grid outputs onto the grid of the image as it was loaded (its own affine and shape).

    ``ref_key`` holds the pre-processed image (a MetaTensor): its ``affine`` is the model grid and its metadata
    keep the ``original_affine`` and ``spatial_shape`` of the loaded file. One resampling undoes the
    reorientation, the resampling and the padding together (flips on an aligned grid are exact).

    Args:
        previous: the image-grid outputs (per key) of an earlier result of the same image, with ``changed``:
            the model-grid voxels (*spatial bool) where this result differs from that one. Only the image voxels
            that read a changed voxel are resampled (:mod:`medsegdiff.partial_resample`), the rest is copied.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        mode: str | Sequence[str] = "bilinear",
        previous: Mapping[Hashable, torch.Tensor] | None = None,
        changed: torch.Tensor | None = None,
    ) -> None:
        super().__init__(keys)
        self.ref_key = ref_key
        self.modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if (previous is None) != (changed is None):
            raise ValueError("previous and changed go together: the outputs of an earlier result and where this one differs")
        self.previous, self.changed = previous, changed
        self.resampled_box: list[list[int]] | str | None = None
        """What the last call resampled: ``"all"`` or the image-grid box (``[start, stop]`` per axis)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        if not isinstance(ref, MetaTensor) or "original_affine" not in ref.meta:
            raise ValueError(f"'{self.ref_key}' must be a MetaTensor that remembers the original affine and shape")
        dst_affine = torch.as_tensor(np.asarray(ref.meta["original_affine"]), dtype=torch.float64)
        shape = [int(s) for s in np.asarray(ref.meta["spatial_shape"]).ravel()]
        box = self._image_box(ref, dst_affine, shape)
        self.resampled_box = "all" if box is None else [[s.start, s.stop] for s in box]
        # the keys of one mode go through one resampling (the sampling grid is built once: on a 1 mm head that
        # is half of the time), channels stacked, then split again
        by_mode: dict[str, list[Hashable]] = {}
        for key, mode in zip(self.key_iterator(d), self.modes):
            by_mode.setdefault(mode, []).append(key)
        # the loaded file's name travels on, so that MONAI's SaveImaged can name what it writes
        meta = {"filename_or_obj": ref.meta.get("filename_or_obj", "")}
        for mode, keys in by_mode.items():
            parts = [torch.as_tensor(d[key]).float() for key in keys]
            src = MetaTensor(torch.cat(parts), affine=ref.affine.clone())
            if box is None:
                resample = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float64)
                out = resample(src, dst_affine=dst_affine, spatial_size=shape).as_tensor().float()
            else:
                before = torch.cat([torch.as_tensor(self.previous[key]).float().cpu() for key in keys])
                out = resample_into(before, src, dst_affine, box, mode)
            for key, channels in zip(keys, out.split([len(p) for p in parts])):
                d[key] = MetaTensor(channels, affine=dst_affine, meta=dict(meta))
        return d

    def _image_box(self, ref: MetaTensor, dst_affine: torch.Tensor, shape: list[int]) -> tuple[slice, ...] | None:
        """The image-grid box to resample given ``previous`` / ``changed``; None: all of it."""
        if self.changed is None:
            return None
        model_shape = list(ref.shape[1:])
        model_box = region_box(self.changed.cpu(), model_shape)  # a mask of another grid: ValueError
        if any(k not in self.previous or list(torch.as_tensor(self.previous[k]).shape[1:]) != shape for k in self.keys):
            return None  # no earlier output of that key on this grid: resample everything
        if model_box is None:
            return tuple(slice(0, 0) for _ in shape)
        return image_box(model_box, ref.affine.cpu().numpy(), model_shape, dst_affine.numpy(), shape)


class ProbabilitiesToLabelsd(MapTransform):
    """Fused foreground probabilities ``(C, *spatial)`` → label map ``(1, *spatial)`` (uint8, 0 = background)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            labels = probabilities_to_labels(torch.as_tensor(probs)[None])[0].to(torch.uint8)
            d[key] = MetaTensor(labels, meta=dict(probs.meta)) if isinstance(probs, MetaTensor) else labels
        return d


def volume_transforms(keys: Sequence[str], spacing: Sequence[float], label_values: Sequence[int] = ()) -> list:
    """Deterministic pre-processing of ``image`` (and ``label``) up to the model grid (no padding)."""
    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    transforms = [
        LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=_RAS_LABELS),
        NormalizeIntensityd(keys="image"),
        Spacingd(keys=keys, pixdim=list(spacing), mode=modes),
    ]
    if "label" in keys:
        transforms.append(RemapLabelsd(keys="label", label_values=label_values))
    transforms.append(EnsureTyped(keys=keys, dtype=torch.float32))
    return transforms


def inference_transforms(spacing: Sequence[float], pad_size: Sequence[int]) -> list:
    """Pre-processing of an image to segment: :func:`volume_transforms` then padding to ``pad_size``."""
    return [*volume_transforms(["image"], spacing), SpatialPadd(keys="image", spatial_size=list(pad_size))]


def min_volume_size(
    spatial_size: Sequence[int], spatial_dims: int, slice_axis: int, views: Sequence[int] = ()
) -> list[int]:
    """Smallest volume the network should see: the training slice size in-plane (2D) or the patch size (3D);
    a 2D network of several ``views`` has every axis in-plane in one of them: the larger slice size on each."""
    if spatial_dims == 3:
        return [int(s) for s in spatial_size]
    if len(views) > 1:
        return [max(int(s) for s in spatial_size)] * 3
    in_plane = iter(int(s) for s in spatial_size)
    return [-1 if axis == slice_axis else next(in_plane) for axis in range(3)]


class SlabToChannelsd(MapTransform):
    """A slab of 2k + 1 slices → the image's slices as channels (slice-major) and the label's middle slice.

    The same layout :func:`medsegdiff.inferer.slice_stack` gives a 2.5D network at inference.
    """

    def __init__(self, slice_axis: int, context_slices: int) -> None:
        super().__init__(keys=["image", "label"])
        self.slice_axis, self.context_slices = slice_axis, context_slices

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        axis = self.slice_axis + 1
        image = torch.as_tensor(d["image"]).movedim(axis, 1)  # (C, 2k+1, h, w)
        d["image"] = image.transpose(0, 1).reshape(-1, *image.shape[2:])
        d["label"] = torch.as_tensor(d["label"]).select(axis, self.context_slices)
        return d


class RandSliceViewd(Randomizable, MapTransform):
    """Puts a random axis of ``views`` where ``slice_axis`` is (image and label alike, channel-first), so the slice
    cut next lies along it: a network trained on several views sees each of them. Slices along axis v keep the
    other two axes in order, as :class:`medsegdiff.inferer.MedSegDiffInferer` cuts them."""

    def __init__(self, views: Sequence[int], slice_axis: int) -> None:
        super().__init__(keys=["image", "label"])
        self.views, self.slice_axis = tuple(int(v) for v in views), slice_axis
        self._view = self.views[0]

    def randomize(self, data: Any = None) -> None:
        self._view = self.views[self.R.randint(len(self.views))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        for key in self.keys:
            d[key] = torch.as_tensor(d[key]).movedim(self._view + 1, self.slice_axis + 1)
        return d


def sample_transforms(
    spatial_size: Sequence[int], spatial_dims: int, slice_axis: int, context_slices: int = 0, guidance: bool = False,
    views: Sequence[int] = (),
) -> Compose:
    """Random training samples from a pre-processed volume: a slice (2D) or a patch (3D), augmented.

    2D: one slice along ``slice_axis`` (3 in 4 slices through the label's foreground), centre-cropped or
    zero-padded to ``spatial_size`` as in ``brain_slices_2d``; a 2.5D network (``context_slices`` = k) gets
    the 2k + 1 slices around it as image channels; a network of several ``views`` gets its slice along a random
    one of them (:class:`RandSliceViewd`). 3D: a patch of ``spatial_size``. ``guidance``: simulated clicks on the
    augmented sample as two more image channels (``medsegdiff.guidance.SimulatedClicksd``).
    """
    keys = ["image", "label"]
    if spatial_dims == 2:
        crop = [-1, -1, -1]
        crop[slice_axis] = 2 * context_slices + 1
        to_2d = SlabToChannelsd(slice_axis, context_slices) if context_slices else SqueezeDimd(keys=keys, dim=slice_axis + 1)
        steps = [
            *([RandSliceViewd(views, slice_axis)] if len(views) > 1 else []),
            SpatialPadd(keys=keys, spatial_size=crop),  # volumes thinner than the slab
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=crop, pos=3, neg=1, num_samples=1),
            to_2d,
            ResizeWithPadOrCropd(keys=keys, spatial_size=list(spatial_size)),
        ]
    else:
        steps = [
            SpatialPadd(keys=keys, spatial_size=list(spatial_size)),
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(spatial_size), pos=1, neg=1, num_samples=1),
        ]
    clicks = [SimulatedClicksd()] if guidance else []
    return Compose([*steps, segmentation_augmentations(spatial_dims), *clicks,
                    EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)])
