"""The bench's issue-10 design experiments: other slice views, 2.5D context, hard members (fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.grid import GridVolume, unview_stack, view_stack  # noqa: E402
from bench.interactive import DOUBT, REACH, SPREAD, fit_views, variants  # noqa: E402
from bench.models import SERVED_RECIPE, build, diffusion_config, predict, views, with_context  # noqa: E402
from monailabel_app.lib.params import INFER_PARAMS  # noqa: E402
from bench.posterior import hard_members  # noqa: E402
from medsegdiff.inferer import MedSegDiffInferer  # noqa: E402
from medsegdiff.sampling import EnsembleSampler  # noqa: E402


def test_views_put_each_axis_last_centre_padded_and_come_back():
    grid = np.arange(6 * 6 * 4, dtype=np.float32).reshape(6, 6, 4)
    sagittal = view_stack(grid, 0, 6)  # slices along x: (y, z) in-plane, z padded 4 -> 6 (one row each side)
    assert sagittal.shape == (6, 6, 6)
    assert sagittal[2, 1, 3] == grid[3, 2, 0] and sagittal[2, 4, 3] == grid[3, 2, 3]
    assert not sagittal[:, 0].any() and not sagittal[:, 5].any()
    coronal = view_stack(grid, 1, 6)  # slices along y: (x, z) in-plane
    assert coronal[5, 2, 1] == grid[5, 1, 1]
    np.testing.assert_array_equal(view_stack(grid, 2, 6), grid)
    members = np.stack([grid, -grid])[:, None]  # (N, K, X, Y, Z)
    for axis in (0, 1, 2):
        np.testing.assert_array_equal(unview_stack(view_stack(members, axis, 6), axis, grid.shape), members)


def test_context_stacks_neighbours_and_repeats_edges():
    stack = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 2, 2), np.float32)
    out = with_context(stack, [0, 3], 1)
    assert out.shape == (2, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1] and out[1, :, 0, 0].tolist() == [2, 3, 3]


def test_hard_members_are_each_members_own_segmentation():
    members = np.array([[[0.7, 0.4]], [[0.2, 0.9]]], np.float32)  # (N=2, K=1 foreground prob, 2 voxels)
    members = np.concatenate([1 - members, members], axis=1)  # (2, 2, 2) background first
    hard = hard_members(members)
    np.testing.assert_array_equal(hard[:, 1], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(hard.sum(axis=1), np.ones((2, 2)))


def test_scaled_and_multi_view_variants_sample_what_they_say():
    assert diffusion_config("medsegdiff_scale03").mask_scale == 0.3
    assert diffusion_config("medsegdiff").mask_scale == 1.0
    image = np.random.default_rng(0).random((16, 16, 6)).astype(np.float32)
    volume = GridVolume("toy", image, np.zeros_like(image, np.uint8), np.zeros((16, 16, 6), np.uint8), (3.0,) * 3,
                        (16, 16, 6), 1)
    network = build("medsegdiff_triplanar", 0).eval()
    out = predict("medsegdiff_triplanar", network, volume, steps=1, members=5, slice_batch=16)
    # 5 members over 3 views as the infer task shares them: 2 / 2 / 1; one call per view (6 axial slices, then 16
    # coronal, 16 sagittal)
    assert out["members"].shape == (5, 2, 16, 16, 6) and out["nfe"] == 3 and out["members_per_view"] == [2, 2, 1]
    network = build("medsegdiff_25d", 0).eval()
    assert network.image_channels == 5
    assert predict("medsegdiff_25d", network, volume, steps=1, members=2)["members"].shape == (2, 2, 16, 16, 6)


def test_a_three_view_prediction_is_the_infer_tasks_result():
    image = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    volume = GridVolume("toy", image, np.zeros_like(image, np.uint8), np.zeros_like(image, np.uint8), (3.0,) * 3,
                        (16, 16, 16), 1)
    network = build("medsegdiff_triplanar", 0).eval()
    members = predict("medsegdiff_triplanar", network, volume, steps=2, members=5, seed=3, slice_batch=4)["members"]
    inferer = MedSegDiffInferer(EnsembleSampler(diffusion_config("medsegdiff_triplanar"), "ddim", 2, 5), seed=3,
                                views=views("medsegdiff_triplanar"), slice_batch_size=4)
    served = inferer(torch.from_numpy(image)[None, None], network)
    # same members, same noise (member index, slice index, seed): the bench scores what the server gives
    np.testing.assert_allclose(members.mean(axis=0)[1], served["probs"][0, 0].numpy(), atol=1e-5)


def test_the_served_recipe_is_clicked_with_hints_on_a_volume_padded_as_the_infer_task_pads_it():
    assert views(SERVED_RECIPE) == (2, 1, 0) and build(SERVED_RECIPE, 0).config["guidance_channels"] == 2
    assert {reach for _, reach, _, _ in variants(SERVED_RECIPE)} == {0, REACH}
    assert {spread for _, _, spread, _ in variants(SERVED_RECIPE)} == {0, SPREAD}
    assert {doubt for _, _, _, doubt in variants(SERVED_RECIPE)} == {0, DOUBT}
    assert SPREAD == next(p.default for p in INFER_PARAMS if p.name == "click_spread")  # the infer task's default
    assert DOUBT == next(p.default for p in INFER_PARAMS if p.name == "click_doubt")
    assert {(reach, spread, doubt) for _, reach, spread, doubt in variants("medsegdiff")} == {(0, 0, 0)}
    label = np.zeros((16, 16, 6), np.uint8)
    label[4:9, 5:10, 1:5] = 1
    volume = GridVolume("toy", label.astype(np.float32), label, label, (3.0,) * 3, (16, 16, 6), 1)
    padded = fit_views(volume, "medsegdiff_triplanar_guided")
    assert padded.image.shape == padded.label.shape == (16, 16, 16)  # every axis at least the slice size
    np.testing.assert_array_equal(padded.label[:, :, 5:11], label)  # centred: 5 zero slices before, 5 after
    assert padded.label.sum() == label.sum()
    assert fit_views(volume, "medsegdiff") is volume  # an axial network sees the volume as it is
