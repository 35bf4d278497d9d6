"""The train task's random samples for a 2.5D network: the slab around a slice as channels, its label slice."""

import torch

from medsegdiff.inferer import slice_stack
from medsegdiff.transforms import SlabToChannelsd, sample_transforms


def test_slab_to_channels_matches_the_inferers_slice_stack():
    volume = torch.rand(1, 6, 7, 9)  # (C, X, Y, Z), slices along Z
    label = torch.arange(9.0).reshape(1, 1, 1, 9).expand(1, 6, 7, 9)
    slab = {"image": volume[..., 3:8], "label": label[..., 3:8]}  # slices 3..7 around slice 5, k = 2
    out = SlabToChannelsd(slice_axis=2, context_slices=2)(slab)
    expected = slice_stack(volume.movedim(3, 1), [5], 2)[0]  # what inference feeds the network for slice 5
    assert torch.equal(out["image"], expected)
    assert out["label"].shape == (1, 6, 7) and bool((out["label"] == 5).all())


def test_train_samples_have_the_networks_channels():
    image, label = torch.rand(1, 20, 20, 12), (torch.rand(1, 20, 20, 12) > 0.5).float()
    for context, channels in ((0, 1), (2, 5)):
        (sample,) = sample_transforms((16, 16), 2, slice_axis=2, context_slices=context)({"image": image, "label": label})
        assert sample["image"].shape == (channels, 16, 16) and sample["label"].shape == (1, 16, 16)
