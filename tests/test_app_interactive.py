"""Interactive correction through the real test server and the official ``MONAILabelClient``.

Clicks (``foreground`` / ``background``, DeepEdit's [i, j, k] image voxels) and a ``label_in`` scribble volume
condition the diffusion sampler; every marked voxel gets the marked class, an empty interaction is the plain
inference bit for bit, only the slices whose marks changed are re-sampled, and bad marks get a 422 naming them.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
IMAGE = "robex_head_lowres"
FAST = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 11}


def _array(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _axial(result: dict) -> list[int]:
    """The axial (model slice axis 2) slices a request re-sampled."""
    return result["interaction"]["resampled_slices"]["2"]


def _nothing_resampled(result: dict) -> bool:
    """No slice of any view re-sampled (the committed model's 2 members run along its first 2 views)."""
    return result["interaction"]["resampled_slices"] == {"2": [], "1": []}


@pytest.fixture(scope="module")
def client(monailabel_server, tmp_path_factory) -> MONAILabelClient:
    return MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path_factory.mktemp("interactive")))


@pytest.fixture(scope="module")
def plain(client):
    path, result = client.infer(MODEL, IMAGE, dict(FAST))
    return _array(path), result


def _marks(label: np.ndarray, count: int = 3) -> tuple[list[list[int]], list[list[int]]]:
    """Foreground clicks where the plain label is background and background clicks where it is foreground, on
    one axial slice through the middle of the head, inside the box of the label on that slice (where an annotator
    clicks; a click in the air by the image's border would make the image-grid box the whole image)."""
    k = label.shape[2] // 2
    rng = np.random.default_rng(0)
    hits = np.argwhere(label[:, :, k] == 1)
    (i0, j0), (i1, j1) = hits.min(axis=0), hits.max(axis=0)
    misses = np.argwhere(label[i0:i1 + 1, j0:j1 + 1, k] == 0) + [i0, j0]
    pick = lambda voxels: [[int(i), int(j), k] for i, j in voxels[rng.choice(len(voxels), count, replace=False)]]  # noqa: E731
    return pick(misses), pick(hits)


def test_info_declares_the_interaction(client):
    info = client.info()["models"][MODEL]
    assert info["parameters"]["foreground"]["default"] == [] and info["parameters"]["background"]["default"] == []
    assert info["interaction"]["label_in"]["values"] == {"unknown": 0, "foreground": 1, "background": 2}
    reach = info["parameters"]["click_reach"]
    assert reach["min"] == 0 and info["interaction"]["click_reach_default"] == reach["default"]
    spread = info["parameters"]["click_spread"]
    assert spread["min"] == 0 and info["interaction"]["click_spread_default"] == spread["default"] == 3
    assert info["interaction"]["click_doubt_default"] is info["parameters"]["click_doubt"]["default"] is True


def test_empty_interaction_is_plain_inference_bit_for_bit(client, plain):
    label, result = plain
    path, empty = client.infer(MODEL, IMAGE, {**FAST, "foreground": [], "background": []})
    assert np.array_equal(_array(path), label)
    assert empty["uncertainty"] == result["uncertainty"]
    assert _nothing_resampled(empty)  # the cached plain result
    assert all(a == b for a, b in empty["interaction"]["image_grid_box"])  # nor resampled onto the image grid
    assert empty["nfe"] == 0 < result["nfe"]


def test_clicks_and_scribbles_give_the_marked_class(monailabel_server, client, plain, tmp_path):
    label, result = plain
    foreground, background = _marks(label)
    hinted = {**FAST, "foreground": foreground, "background": background, "click_reach": 8}
    path, out = client.infer(MODEL, IMAGE, hinted)
    corrected = _array(path)
    assert all(corrected[tuple(p)] == 1 for p in foreground) and all(corrected[tuple(p)] == 0 for p in background)
    resampled = _axial(out)
    # every click is on one slice; its ball (the default radius, 2 model voxels) crosses that slice and two per
    # side, and the committed (guided) model reads its hints on click_reach (8) slices beyond
    assert resampled == list(range(resampled[0], resampled[0] + 2 * 2 + 1 + 2 * 8))
    # the coronal view re-samples the slices the 6 balls cross (5 each, some shared), not the whole head
    coronal = out["interaction"]["resampled_slices"]["1"]
    assert 5 <= len(coronal) <= 6 * 5
    # the same file again: its pre-processing comes from MONAI Label's cache
    assert list(out["latencies"]["transform"]["pre"]) == ["LoadFromCache"]
    # onto the image grid: the box of those slices, not the whole image
    box, shape = out["interaction"]["image_grid_box"], label.shape
    assert box != "all" and 0 < np.prod([b - a for a, b in box]) < 0.5 * np.prod(shape)
    assert 0 < out["nfe"] < result["nfe"]

    # a line across a slice that says the opposite of the plain label at every voxel
    scribbles = np.zeros(label.shape, np.uint8)
    i, k = label.shape[0] // 2, label.shape[2] // 3
    scribbles[i, :, k] = np.where(label[i, :, k] == 0, 1, 2)
    affine = nib.load(str(monailabel_server.datastore / f"{IMAGE}.nii.gz")).affine
    scribble_file = tmp_path / "scribbles.nii.gz"
    nib.save(nib.Nifti1Image(scribbles, affine), str(scribble_file))
    path, out = client.infer(MODEL, IMAGE, dict(FAST), label_in=str(scribble_file))
    corrected = _array(path)
    assert out["interaction"]["marked_voxels"]["scribble_foreground"] == int((scribbles == 1).sum()) > 0
    assert np.all(corrected[scribbles == 1] == 1) and np.all(corrected[scribbles == 2] == 0)


def test_undo_gives_back_the_earlier_result_without_sampling(client, plain):
    label, _ = plain
    foreground, background = _marks(label, count=1)
    fresh = {**FAST, "seed": 12}  # a seed of its own: nothing cached before this test
    path, first = client.infer(MODEL, IMAGE, {**fresh, "foreground": foreground})
    once = _array(path)
    _, both = client.infer(MODEL, IMAGE, {**fresh, "foreground": foreground, "background": background})
    assert both["nfe"] > 0
    path, undone = client.infer(MODEL, IMAGE, {**fresh, "foreground": foreground})  # the background click undone
    assert np.array_equal(_array(path), once) and undone["uncertainty"] == first["uncertainty"]
    assert undone["nfe"] == 0 and _nothing_resampled(undone)


def test_click_hints_follow_the_automatic_labels_error_and_are_part_of_the_cached_result(client, plain):
    label, _ = plain
    k = label.shape[2] // 2
    air = {**FAST, "seed": 13, "foreground": [[1, 1, k]]}  # a seed of its own; the corner is background everywhere
    _, first = client.infer(MODEL, IMAGE, {**air, "click_reach": 3})
    # nothing was cached for this seed: the automatic result the hints follow is sampled first (and cached), then
    # the click re-samples its ball and the 3 hint slices each side of it
    resampled = _axial(first)
    assert resampled == list(range(resampled[0], resampled[0] + 11))
    _, ball = client.infer(MODEL, IMAGE, {**air, "click_reach": 0})
    # the same click without hints: only the 3 slices each side beyond its ball are re-sampled
    hinted = _axial(ball)
    centre = (hinted[2] + hinted[3]) // 2
    assert hinted == [*range(centre - 5, centre - 2), *range(centre + 3, centre + 6)]
    _, again = client.infer(MODEL, IMAGE, {**air, "click_reach": 3})  # served before, with its hints: given back
    assert again["nfe"] == 0
    # a foreground click inside the brain, where the automatic label already says brain: no hints, the ball alone
    brain = np.argwhere(label[:, :, k] == 1).mean(axis=0).round().astype(int).tolist()
    _, inside = client.infer(MODEL, IMAGE, {**air, "foreground": [[1, 1, k], [*brain, k]], "click_reach": 3})
    resampled = _axial(inside)
    assert resampled == list(range(resampled[0], resampled[0] + 5))
    _, automatic = client.infer(MODEL, IMAGE, {**FAST, "seed": 13})
    assert automatic["nfe"] == 0  # the automatic result, sampled for the first click's hints, is kept


def test_click_spread_moves_the_boundary_near_the_click_and_is_its_own_cached_result(monailabel_server, client):
    fresh = {**FAST, "seed": 14}  # a seed of its own: the automatic result of this test is sampled here
    path, _ = client.infer(MODEL, IMAGE, fresh)
    label = _array(path)
    k = label.shape[2] // 2
    # a foreground click on a background voxel next to the automatic label's edge, middle axial slice
    inside = label[:, :, k] == 1
    edge = np.argwhere((label[:, :, k] == 0) & (np.roll(inside, 1, 0) | np.roll(inside, -1, 0)))
    point = [int(edge[len(edge) // 2][0]), int(edge[len(edge) // 2][1]), k]
    path, narrow = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point], "click_spread": 0})
    ball = _array(path)
    path, wide = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point]})  # the default, click_spread 3
    spread = _array(path)
    assert wide["nfe"] > 0 and ball[tuple(point)] == 1 == spread[tuple(point)]
    grown = np.argwhere((spread == 1) & (ball == 0))
    assert len(grown) > 0 and not np.any((spread == 0) & (ball == 1))  # a foreground click only adds foreground
    # near the click: within click_radius + click_spread + 1 model voxels (3 mm each) plus one image voxel
    zooms = np.asarray(nib.load(str(monailabel_server.datastore / f"{IMAGE}.nii.gz")).header.get_zooms()[:3])
    assert np.all(np.abs(grown - point) * zooms <= (2 + 3 + 1) * 3.0 + zooms)
    # the same marks without the spread are the result served before it; with it again, the spread one
    path, again = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point], "click_spread": 0})
    assert again["nfe"] == 0 and np.array_equal(_array(path), ball)
    path, again = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point]})
    assert again["nfe"] == 0 and np.array_equal(_array(path), spread)


def test_click_doubt_raises_the_uncertainty_far_from_the_click_and_keeps_the_label(monailabel_server, client):
    fresh = {**FAST, "seed": 15}  # a seed of its own: the automatic result of this test is sampled here
    path, _ = client.infer(MODEL, IMAGE, fresh)
    label = _array(path)
    k = label.shape[2] // 2
    # a foreground click three voxels outside the automatic label, middle axial slice: it corrects voxels the
    # ensemble called background for sure, as a held-out head's missed rim (the voxels like them are many)
    outside = np.argwhere(np.isclose(ndimage.distance_transform_edt(label[:, :, k] == 0), 3))
    point = [int(outside[len(outside) // 2][0]), int(outside[len(outside) // 2][1]), k]
    # the two clicks start from the same cached automatic result: click_doubt changes how a click is applied only
    path, _ = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point], "click_doubt": False})
    plain_label, plain = _array(path), _array(client.download_label(IMAGE, "uncertainty"))
    path, second = client.infer(MODEL, IMAGE, {**fresh, "foreground": [point]})  # the default: click_doubt true
    flagged_label, flagged = _array(path), _array(client.download_label(IMAGE, "uncertainty"))
    assert second["nfe"] > 0  # another result of the same marks, not the one without the flags
    assert np.array_equal(flagged_label, plain_label)  # the label is the same; only the uncertainty rises
    assert not np.any(flagged < plain - 1e-5) and flagged[tuple(point)] == 0  # the mark stays certain
    raised = np.argwhere(flagged > plain + 1e-3)
    # voxels like the corrected ones far beyond the spread's reach (click_radius + click_spread + 1 model voxels)
    zooms = np.asarray(nib.load(str(monailabel_server.datastore / f"{IMAGE}.nii.gz")).header.get_zooms()[:3])
    far = np.linalg.norm((raised - point) * zooms, axis=1) > (2 + 3 + 1) * 3.0 + zooms.max()
    assert far.sum() > 10


def test_uncertainty_margin_widens_the_map_and_a_click_updates_it_as_a_whole_resampling_would(client):
    fresh = {**FAST, "seed": 17, "click_doubt": False}  # a seed of its own; no flags (painted, not resampled)
    path, _ = client.infer(MODEL, IMAGE, {**fresh, "uncertainty_margin": 0})
    label, unwidened = _array(path), _array(client.download_label(IMAGE, "uncertainty"))
    path, widened_result = client.infer(MODEL, IMAGE, fresh)  # the default margin, 1 voxel: the same sampled result
    widened = _array(client.download_label(IMAGE, "uncertainty"))
    assert widened_result["nfe"] == 0 and np.array_equal(_array(path), label)  # the label does not change
    # the voxels just outside the label (within 3 mm: one model voxel) become uncertain: its boundary may move there
    rim = ndimage.binary_dilation(label > 0, iterations=3) & (label == 0)
    assert np.median(widened[rim]) > np.median(unwidened[rim]) + 0.05
    point, wide = [[int(c) for c in np.argwhere(rim)[len(np.argwhere(rim)) // 2]]], {**fresh, "uncertainty_margin": 3}
    client.infer(MODEL, IMAGE, wide)
    client.infer(MODEL, IMAGE, {**wide, "foreground": point})  # the image grid updated as far as the click reached
    clicked = _array(client.download_label(IMAGE, "uncertainty"))
    client.infer(MODEL, IMAGE, {**fresh, "foreground": point, "uncertainty_margin": 0})
    _, again = client.infer(MODEL, IMAGE, {**wide, "foreground": point})  # another margin before: resampled whole
    assert again["nfe"] == 0 and again["interaction"]["image_grid_box"] == "all"
    assert np.allclose(_array(client.download_label(IMAGE, "uncertainty")), clicked, atol=1e-5)


@pytest.mark.parametrize(
    "params, named",
    [
        ({"foreground": [[0, 0, 10_000]]}, "foreground[0]"),
        ({"background": [[1, 2, 3], [-1, 2, 3]]}, "background[1]"),
        ({"foreground": [[1, 2]]}, "3 coordinates"),
        ({"background": [[1, 2.5, 3]]}, "integer"),
        ({"foreground": "1,2,3"}, "foreground must be a list"),
        ({"marked_class": 2}, "marked_class"),
    ],
)
def test_bad_clicks_are_refused_naming_them(client, params, named):
    with pytest.raises(MONAILabelClientException, match="422") as error:
        client.infer(MODEL, IMAGE, {**FAST, **params})
    assert named in str(error.value)


@pytest.mark.parametrize("problem", ["values", "shape"])
def test_bad_label_in_is_refused_naming_it(client, plain, tmp_path, problem):
    label, _ = plain
    scribbles = np.zeros(label.shape if problem == "values" else label.shape[:2] + (3,), np.uint8)
    scribbles[1, 1, 1] = 5 if problem == "values" else 1
    scribble_file = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(scribbles, np.eye(4)), str(scribble_file))
    with pytest.raises(MONAILabelClientException, match="422") as error:
        client.infer(MODEL, IMAGE, dict(FAST), label_in=str(scribble_file))
    assert "label_in" in str(error.value) and ("[0, 1, 2]" in str(error.value) if problem == "values" else "shape" in str(error.value))
