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


def test_paint_model_voxels_paints_the_image_voxels_inside_each_flagged_model_voxel():
    from medsegdiff.partial_resample import paint_model_voxels

    model_affine = np.diag([3.0, 3.0, 3.0, 1.0])  # model voxel m is centred at 3m mm, its cell 3m - 1.5 .. 3m + 1.5
    image_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    image_affine[0, 0], image_affine[0, 3] = -1.0, 20.0  # image axis 0 flipped: image index i is at 20 - i mm
    mask = np.zeros((6, 6, 6), bool)
    mask[2, 1, 4] = True  # centre (6, 3, 12) mm: image voxels 20 - i in 4.5..7.5, j in 1.5..4.5, k in 10.5..13.5
    target = torch.zeros(1, 21, 18, 18)
    paint_model_voxels(target, mask, model_affine, image_affine, 1.0)
    expected = torch.zeros(1, 21, 18, 18)
    expected[0, 13:16, 2:5, 11:14] = 1.0
    assert torch.equal(target, expected)
    assert paint_model_voxels(target, np.zeros((6, 6, 6), bool), model_affine, image_affine, 5.0) is target


def test_paint_model_voxels_on_an_oblique_grid_paints_the_voxels_nearest_to_a_flagged_model_voxel():
    from medsegdiff.partial_resample import paint_model_voxels

    angle = np.deg2rad(20.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    model_affine = rotation @ np.diag([3.0, 3.0, 3.0, 1.0])
    model_affine[:3, 3] = [10.0, 2.0, 0.0]
    image_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    mask = np.zeros((5, 5, 4), bool)
    mask[1, 2, 1] = mask[3, 3, 2] = True
    target = torch.zeros(2, 24, 20, 14)
    paint_model_voxels(target, mask, model_affine, image_affine, 0.5)
    # every image voxel by hand: its centre in model index space, rounded to the nearest model voxel
    to_model = np.linalg.inv(model_affine)
    for i, j, k in np.ndindex(24, 20, 14):
        m = np.floor(to_model[:3, :3] @ [i, j, k] + to_model[:3, 3] + 0.5).astype(int)
        inside = np.all(m >= 0) and np.all(m < mask.shape) and mask[tuple(m)]
        assert target[0, i, j, k] == target[1, i, j, k] == (0.5 if inside else 0.0)
    assert 10 < int((target[0] > 0).sum()) < 2 * 27 + 20  # two cells of 3 x 3 x 3 mm
