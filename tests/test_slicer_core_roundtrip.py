"""The annotator's round trip on 3D Slicer's own libraries (slicer-core) against the real MONAI Label server.

next sample -> load -> infer -> segments and uncertainty overlay in the scene -> edit a segment with
``slicer.util.updateSegmentBinaryLabelmapFromArray`` -> submit -> the datastore's ``final`` label equals the edited
segments voxel for voxel on the image's grid -> train (tiny) -> the new checkpoint is served. Once for a RAS image
(the strategy's next sample, through ``MedSegDiffSceneLib.roundtrip``, the code the in-Slicer ``MedSegDiffTest``
runs) and once for the LAS ``robex_head_flipped`` (Slicer flips its K axis on loading), with every server call in
a background job driven the way Slicer's main thread drives it (``run_like_slicer``).
"""

import colorsys
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from slicer_core_app import SlicerCoreApp, run_like_slicer

from MedSegDiffLib import BackgroundWork, read_image, transfer_to_grid, uncertainty_display_range  # noqa: E402
from MedSegDiffSceneLib import FINAL_TAG, MedSegDiffLogic, ijkToRasArray  # noqa: E402
from MedSegDiffSceneLib.roundtrip import FAST_PARAMS, editSegment, roundTripProblems, runRoundTrip  # noqa: E402

MODEL = "medsegdiff"
LAS_IMAGE = "robex_head_flipped"
TINY_TRAINING = {"max_epochs": 1, "samples_per_epoch": 2, "batch_size": 2, "val_split": 0.5,
                 "val_num_inference_steps": 1, "val_num_ensemble": 1}  # fmt: skip
POLL_INTERVAL_S = 0.5
REPO = Path(__file__).resolve().parents[1]
RENDER_PYTHON = REPO / ".venv-slicer" / "bin" / "python"  # trame-slicer's environment (scripts/setup.sh)
OVERLAY_OPACITY = 0.5
pytestmark = pytest.mark.slow


@pytest.fixture
def logic():
    app = SlicerCoreApp()
    logic = MedSegDiffLogic(app.scene, app.fileIO)
    yield logic
    logic.cleanup()


def _in_background(work, function, *args):
    """Run a Logic call in a background job, the main thread behaving like Slicer's; returns its result."""
    results = []
    work.start(function, *args, onDone=lambda r: results.append(("ok", r)), onError=lambda e: results.append(("error", e)))
    seconds = run_like_slicer(work, timeout_s=600)
    assert results, f"{function.__name__} did not finish within {seconds:.0f} s"
    status, value = results[0]
    if status == "error":
        raise value
    return value, seconds


def _datastore_final(server, image_id):
    """The final label file the datastore holds for ``image_id``, read with nibabel ([i, j, k] -> [k, j, i])."""
    path = next((Path(server.datastore) / "labels" / FINAL_TAG).glob(f"{image_id}.*"))
    image = nib.load(str(path))
    return np.asarray(image.dataobj).transpose(2, 1, 0), image.affine


def _image_affine(server, image_id):
    return nib.load(str(next(Path(server.datastore).glob(f"{image_id}.nii*")))).affine


def _check_rendered_view(server, info, kept, out):
    """Slicer's own renderer (trame-slicer, headless) shows the volume, the segment outline and the overlay."""
    if not RENDER_PYTHON.is_file():
        pytest.skip(f"{RENDER_PYTHON} is missing: scripts/setup.sh makes trame-slicer's environment")
    from PIL import Image

    uncertainty = next(kept.glob("uncertaintyPath*"))
    low, high = uncertainty_display_range(read_image(uncertainty)[0])
    colors = {name: list(rgb) for name, rgb in info.colors(MODEL).items()}
    command = [
        str(RENDER_PYTHON), str(REPO / "scripts" / "render_slicer_view.py"),
        str(next(Path(server.datastore).glob(f"{LAS_IMAGE}.nii*"))), str(next(kept.glob("labelPath*"))),
        str(uncertainty), str(out), "--labels", json.dumps(info.labels(MODEL)), "--colors", json.dumps(colors),
        "--threshold", str(low + 0.1 * (high - low)), "--opacity", str(OVERLAY_OPACITY), "--size", "384",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # EGL, no X server
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and out.is_file(), f"rendering failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if os.environ.get("MEDSEGDIFF_VIEW_PNG"):  # to refresh the README picture
        shutil.copy(out, os.environ["MEDSEGDIFF_VIEW_PNG"])
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert pixels.std() > 20, "the rendered view is blank"
    segment = np.array(colors["brain"]) * 255
    outline = np.linalg.norm(pixels - segment, axis=-1) < 30
    assert outline.sum() > 50, f"the segment colour {segment.round()} is not in the view"
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in (pixels.reshape(-1, 3)[::7] / 255)])
    segment_hue = colorsys.rgb_to_hsv(*(segment / 255))[0]
    hue_distance = np.minimum(abs(hsv[:, 0] - segment_hue), 1 - abs(hsv[:, 0] - segment_hue))
    overlay = (hsv[:, 1] > 0.5) & (hsv[:, 2] > 0.3) & (hue_distance > 0.15)
    assert overlay.sum() > 50, "no uncertainty overlay (colours other than the segment's) in the view"


def test_round_trip_on_the_strategys_next_sample(monailabel_server, logic):
    logic.connect(monailabel_server.url)
    sample = logic.client.next_sample("uncertainty")
    assert sample is not None, "the uncertainty strategy has no unlabelled image left"
    try:
        run = runRoundTrip(logic, monailabel_server.url, imageId=sample["id"])
        assert roundTripProblems(run) == []
        assert run["result"]["uncertainty"].GetAttribute(logic.UNCERTAINTY_ATTRIBUTE) == "1"
        assert run["volume"].GetAttribute(logic.UNCERTAINTY_ATTRIBUTE) is None  # the selector filters on it
        stored, affine = _datastore_final(monailabel_server, sample["id"])  # the file itself, not the API
        np.testing.assert_array_equal(stored, run["edited"])
        np.testing.assert_allclose(affine, _image_affine(monailabel_server, sample["id"]), atol=1e-4)
        assert run["edited"].any()
    finally:  # give the image back to the pool the other tests draw from
        requests.delete(f"{monailabel_server.url}/datastore/label", params={"id": sample["id"], "tag": FINAL_TAG})


def _submit(work, logic, segmentation, volume, server):
    exported, _ = logic.exportLabel(segmentation, volume)
    _in_background(work, logic.uploadLabel, LAS_IMAGE, exported)
    return _datastore_final(server, LAS_IMAGE)


def test_round_trip_on_a_left_handed_image_in_background_jobs_then_training(monailabel_server, logic, tmp_path):
    import slicer

    work = BackgroundWork()
    info, _ = _in_background(work, lambda report: logic.connect(monailabel_server.url))
    image_affine = _image_affine(monailabel_server, LAS_IMAGE)
    assert nib.aff2axcodes(image_affine) == ("L", "A", "S")
    sample, _ = _in_background(work, lambda report: {
        "id": LAS_IMAGE, "path": logic.client.download_image(LAS_IMAGE, str(tmp_path / "download"))})  # fmt: skip
    volume = logic.loadSample(sample)
    assert np.linalg.det(ijkToRasArray(volume)[:3, :3]) > 0, "Slicer's reader should make the grid right-handed"

    remote, infer_s = _in_background(work, logic.runRemote, logic.prepareInput(volume), FAST_PARAMS)
    server_s = float(remote["result"]["latencies"]["total"])
    # Downloading the label and the float uncertainty map must not crawl between Slicer's timer ticks.
    assert infer_s <= server_s + 2.0, f"inference took {infer_s:.1f} s, the server worked {server_s:.1f} s"
    kept = tmp_path / "server_result"  # for the picture below (importResults removes its files)
    kept.mkdir()
    for key in ("labelPath", "uncertaintyPath"):
        shutil.copy(remote[key], kept / f"{key}{''.join(Path(remote[key]).suffixes)}")
    segmentation = logic.importResults(volume, remote)["segmentation"]
    assert [segmentation.GetSegmentation().GetNthSegment(0).GetName()] == list(info.labels(MODEL))
    inferred = np.array(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "brain", volume))

    # An emptied segment is submitted as an empty label (no crash), on the server image's own grid.
    editSegment(segmentation, volume, "brain", empty=True)
    stored, affine = _submit(work, logic, segmentation, volume, monailabel_server)
    np.testing.assert_allclose(affine, image_affine, atol=1e-4)
    assert stored.shape == inferred.shape and not stored.any()

    # Slab erased and blob painted on the inferred segment: the datastore holds the edit, voxel for voxel.
    slicer.util.updateSegmentBinaryLabelmapFromArray(inferred, segmentation, "brain", volume)
    edited = editSegment(segmentation, volume, "brain")
    stored, affine = _submit(work, logic, segmentation, volume, monailabel_server)
    shape, grid = logic.serverGrid(volume)
    expected = transfer_to_grid(edited.astype(np.uint8), ijkToRasArray(volume), grid, shape)
    np.testing.assert_allclose(affine, image_affine, atol=1e-4)
    np.testing.assert_array_equal(stored, expected)
    # The same world position: the LAS file's k axis is Slicer's k axis reversed.
    np.testing.assert_array_equal(stored, edited[::-1])
    assert (edited != inferred).any(), "the edit changed nothing"

    # Tiny training; the poller keeps polling at its interval between Slicer's timer ticks.
    before = remote["result"]["checkpoint"]
    baseline, _ = _in_background(work, logic.startTraining, TINY_TRAINING)
    polls = []
    poller = logic.trainingPoller(polls.append, baseline, interval=POLL_INTERVAL_S)
    work.watch(poller)
    train_s = run_like_slicer(work, timeout_s=900)
    assert poller.latest.status == "DONE", f"training ended {poller.latest.status}: {poller.latest.task}"
    assert len(polls) >= 0.5 * train_s / POLL_INTERVAL_S, f"{len(polls)} polls in {train_s:.1f} s"

    served, _ = _in_background(work, lambda report: logic.client.infer(
        MODEL, "robex_head_lowres", {"num_inference_steps": 1, "num_ensemble": 1}, dest_dir=str(tmp_path / "again")))
    after = served.result["checkpoint"]
    folder = Path(monailabel_server.model_dir) / MODEL
    best, last = folder / "best.pt", folder / "last.pt"
    from medsegdiff.checkpoint import read_checkpoint

    run = read_checkpoint(last)["metadata"]["run"]["id"]
    published = best.is_file() and read_checkpoint(best)["metadata"]["run"]["id"] == run
    if published:  # an epoch beat the served model: its checkpoint is served now
        assert (after["file"], after["mtime"]) == (best.name, best.stat().st_mtime)
        assert (after["file"], after["mtime"]) != (before["file"], before["mtime"]), "the new checkpoint is not served"
    else:  # no epoch beat the served model: it stays served (safe publishing), and the run said why
        assert (after["file"], after["mtime"]) == (before["file"], before["mtime"])
        assert "not published" in read_checkpoint(last)["metadata"]["publish"]["reason"]

    # Last, as it skips without trame-slicer's environment: the first result in Slicer's own slice view.
    _check_rendered_view(monailabel_server, info, kept, tmp_path / "axial.png")
