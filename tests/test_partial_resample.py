"""After an interaction only the image voxels that read a changed model voxel are resampled onto the image grid;
the result matches resampling everything (to float rounding), and what reads no change is the previous output."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medsegdiff.transforms import ToOriginalGridd, inference_transforms


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """A left-handed, anisotropic, slightly rotated 1 mm-ish image and its 3 mm model grid (padded)."""
    angle = np.deg2rad(7)
    affine = np.diag([-1.0, 1.2, 0.9, 1.0])
    affine[:3, :3] = affine[:3, :3] @ np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine[:3, 3] = [40.0, -30.0, -12.0]
    image = np.random.default_rng(0).normal(size=(45, 52, 33)).astype(np.float32)
    path = tmp_path_factory.mktemp("partial") / "image.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return Compose(inference_transforms((3.0, 3.0, 3.0), (24, 24, 1)))({"image": str(path)})


def _back(grids, probs, entropy, **kwargs):
    transform = ToOriginalGridd(keys=["pred", "uncertainty"], ref_key="image", **kwargs)
    return transform({"image": grids["image"], "pred": probs, "uncertainty": entropy}), transform


def _outputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, *shape), generator=g), torch.rand((1, *shape), generator=g)


def test_a_few_changed_slices_resample_a_box_that_matches_a_full_resampling(grids):
    shape = grids["image"].shape[1:]
    probs, entropy = _outputs(shape, 0)
    before, _ = _back(grids, probs, entropy)
    new_probs, new_entropy = probs.clone(), entropy.clone()
    new_probs[:, 6:12, 7:13, 4:7], new_entropy[:, 8:10, 9:11, 5:6] = 0.97, 0.01  # a click's slices
    changed = (new_probs != probs).any(0) | (new_entropy != entropy).any(0)
    previous = {k: before[k] for k in ("pred", "uncertainty")}
    partial, transform = _back(grids, new_probs, new_entropy, previous=previous, changed=changed)
    full, _ = _back(grids, new_probs, new_entropy)
    box = transform.resampled_box
    assert box != "all" and np.prod([b - a for a, b in box]) < 0.25 * np.prod(full["pred"].shape[1:])
    for key in ("pred", "uncertainty"):
        torch.testing.assert_close(partial[key].as_tensor(), full[key].as_tensor(), rtol=0, atol=1e-6)
        assert torch.equal(partial[key].affine, full[key].affine)
    outside = torch.ones(full["pred"].shape[1:], dtype=torch.bool)
    outside[tuple(slice(a, b) for a, b in box)] = False
    assert torch.equal(partial["pred"][0][outside], before["pred"][0][outside])  # copied, not resampled


def test_nothing_changed_gives_the_previous_output_exactly(grids):
    shape = grids["image"].shape[1:]
    probs, entropy = _outputs(shape, 1)
    before, _ = _back(grids, probs, entropy)
    previous = {k: before[k] for k in ("pred", "uncertainty")}
    again, transform = _back(grids, probs, entropy, previous=previous, changed=torch.zeros(shape, dtype=torch.bool))
    assert all(torch.equal(again[k].as_tensor(), before[k].as_tensor()) for k in previous)
    assert all(a == b for a, b in transform.resampled_box)


def test_a_change_on_the_model_grids_border_resamples_everything(grids):
    shape = grids["image"].shape[1:]
    probs, entropy = _outputs(shape, 2)
    before, _ = _back(grids, probs, entropy)
    changed = torch.zeros(shape, dtype=torch.bool)
    changed[0, 5, 5] = True  # border padding clamps points beyond the grid onto this voxel's face
    probs[0, 0, 5, 5] = 1.0
    partial, transform = _back(grids, probs, entropy, previous={k: before[k] for k in ("pred", "uncertainty")}, changed=changed)
    full, _ = _back(grids, probs, entropy)
    assert transform.resampled_box == "all" and torch.equal(partial["pred"].as_tensor(), full["pred"].as_tensor())
    with pytest.raises(ValueError, match="go together"):
        ToOriginalGridd(keys="pred", changed=changed)
