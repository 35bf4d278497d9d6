"""Training data: labelled volumes pre-processed once, random slices (2D) or patches (3D) drawn from them."""

from __future__ import annotations

from collections.abc import Sequence

from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["RandomSampleDataset", "cache_volumes", "make_loader"]


class RandomSampleDataset(Dataset):
    """``length`` random samples per epoch; sample ``i`` comes from volume ``i mod N``.

    Args:
        volumes: pre-processed ``{"image", "label"}`` volumes (e.g. a ``CacheDataset``).
        transform: random crop + augmentation (:func:`medsegdiff.transforms.sample_transforms`).
        length: samples per epoch.
    """

    def __init__(self, volumes: Dataset, transform: Compose, length: int) -> None:
        if len(volumes) == 0:
            raise ValueError("no labelled volumes to draw training samples from")
        self.volumes = volumes
        self.transform = transform
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        sample = self.transform(dict(self.volumes[index % len(self.volumes)]))
        return sample[0] if isinstance(sample, list) else sample


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, rank: int = 0, world_size: int = 1, seed: int = 0
) -> DataLoader:
    """A MONAI ``DataLoader``; with ``world_size`` > 1 a ``DistributedSampler`` gives each rank its share."""
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=0)


def cache_volumes(datalist: Sequence[dict], transforms: Sequence) -> CacheDataset:
    """Pre-process every volume once (load, RAS, normalise, resample) and keep it in memory."""
    return CacheDataset(list(datalist), Compose(list(transforms)), num_workers=0, progress=False)
