"""The annotator's round trip, shared by the in-Slicer ``MedSegDiffTest`` and the pytest suite on slicer-core.

next sample -> load -> infer -> segments and uncertainty overlay -> edit a segment with
``slicer.util.updateSegmentBinaryLabelmapFromArray`` -> submit -> download the stored ``final`` label.
"""

import os
import shutil
import tempfile

import numpy as np
import slicer

from MedSegDiffLib import read_image, transfer_to_grid

from .logic import FINAL_TAG
from .segments import ijkToRasArray

__all__ = [
    "FAST_PARAMS", "SERVER_URL_ENV", "editSegment", "roundTripProblems", "runRoundTrip", "serverUrlFromEnvironment",
    "submitAndFetch",
]

SERVER_URL_ENV = "MEDSEGDIFF_SERVER_URL"
FAST_PARAMS = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 0}


def serverUrlFromEnvironment():
    """``(url, None)``, or ``(None, why the round trip is skipped)`` when ``MEDSEGDIFF_SERVER_URL`` is unset."""
    url = os.environ.get(SERVER_URL_ENV)
    if url:
        return url, None
    return None, f"{SERVER_URL_ENV} is not set (e.g. http://127.0.0.1:8000): skipping the MedSegDiff round trip."


def editSegment(segmentationNode, volumeNode, segmentId, empty=False):
    """Correct a segment the way an annotator would: erase a slab of slices and paint a blob (or empty it).

    Returns:
        The segment's new voxels ``[k, j, i]`` on the volume's grid.
    """
    voxels = np.array(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode))
    if empty:
        voxels[:] = 0
    else:
        k = voxels.shape[0]
        voxels[k // 3: k // 3 + max(k // 10, 1)] = 0  # the slab
        z, y, x = np.ogrid[: voxels.shape[0], : voxels.shape[1], : voxels.shape[2]]
        centre = (0.75 * voxels.shape[0], 0.2 * voxels.shape[1], 0.3 * voxels.shape[2])  # off-centre: flips show
        radius = max(2.0, min(voxels.shape) / 10.0)
        voxels[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(voxels.astype(np.uint8), segmentationNode, segmentId, volumeNode)
    return voxels


def submitAndFetch(logic, segmentationNode, volumeNode):
    """Submit the segmentation as ``final`` and download what the datastore stored.

    Returns:
        ``(stored[k, j, i], stored ijk_to_lps, skipped segment names)``.
    """
    _, skipped = logic.submitLabel(segmentationNode, volumeNode)
    folder = tempfile.mkdtemp(prefix="final-", dir=logic.tempDir)
    try:
        stored, ijkToLps = read_image(logic.client.download_label(logic.imageId(volumeNode), FINAL_TAG, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return stored, ijkToLps, skipped


def runRoundTrip(logic, serverUrl, imageId=None, params=None, report=None):
    """Run the round trip on ``logic``'s scene and return what a test checks.

    Args:
        logic: a ``MedSegDiffLogic``.
        serverUrl: the MONAI Label server.
        imageId: a datastore image; the default strategy's next sample when None (or when it has none left,
            ``MEDSEGDIFF_TEST_IMAGE_ID`` or ``robex_head``).
        params: inference parameters (``FAST_PARAMS`` when None).
        report: optional ``report(message)`` for progress.

    Returns:
        dict with ``info``, ``volume``, ``result`` (of ``process``), ``segmentNames``, ``uncertaintyShape``,
        ``volumeShape``, ``mostUncertain`` (k), ``foreground`` (background / foreground volume IDs of the slice
        views), ``edited`` (expected label on the server image's grid), ``stored`` and ``storedIjkToRas``.
    """
    report = report or (lambda message: None)
    report(f"Connecting to {serverUrl}")
    info = logic.connect(serverUrl)
    report("Loading a sample volume from the server")
    sample = None if imageId else logic.downloadNextSample(lambda *args: None)
    if sample is None:
        imageId = imageId or os.environ.get("MEDSEGDIFF_TEST_IMAGE_ID", "robex_head")
        folder = tempfile.mkdtemp(prefix="sample-", dir=logic.tempDir)
        sample = {"id": imageId, "path": logic.client.download_image(imageId, folder)}
    volume = logic.loadSample(sample)
    report(f"Running MedSegDiff on '{sample['id']}'")
    result = logic.process(volume, dict(params or FAST_PARAMS))
    segmentation = result["segmentation"].GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    k, _ = logic.jumpToMostUncertainSlice(result["uncertainty"])
    composite = logic.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    layers = (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) if composite else None
    report("Correcting a segment and submitting the label as final")
    segmentId = segmentation.GetSegmentIdBySegmentName(names[0])
    edited = editSegment(result["segmentation"], volume, segmentId)
    labelValue = info.labels(logic.model)[names[0]]
    shape, gridIjkToRas = logic.serverGrid(volume)
    expected = transfer_to_grid(edited.astype(np.uint8) * labelValue, ijkToRasArray(volume), gridIjkToRas, shape)
    stored, ijkToLps, _ = submitAndFetch(logic, result["segmentation"], volume)
    return {
        "info": info,
        "volume": volume,
        "result": result,
        "segmentNames": names,
        "volumeShape": slicer.util.arrayFromVolume(volume).shape,
        "uncertaintyShape": slicer.util.arrayFromVolume(result["uncertainty"]).shape,
        "mostUncertain": k,
        "layers": layers,
        "edited": expected,
        "gridIjkToRas": gridIjkToRas,
        "stored": stored,
        "storedIjkToRas": np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijkToLps,
    }


def roundTripProblems(run):
    """What is wrong with a ``runRoundTrip`` result, as sentences (empty when the round trip worked)."""
    problems = []
    labels = run["info"].labels(run["info"].default_model())
    if sorted(run["segmentNames"]) != sorted(labels):
        problems.append(f"segments {run['segmentNames']} are not the server's labels {sorted(labels)}")
    if run["uncertaintyShape"] != run["volumeShape"]:
        problems.append(f"uncertainty map {run['uncertaintyShape']} is not on the volume's grid {run['volumeShape']}")
    if not 0 <= run["mostUncertain"] < run["volumeShape"][0]:
        problems.append(f"most uncertain slice {run['mostUncertain']} is outside the volume")
    if run["layers"] is not None and run["layers"] != (run["volume"].GetID(), run["result"]["uncertainty"].GetID()):
        problems.append(f"slice views show {run['layers']}, not the volume under its uncertainty map")
    if run["stored"].shape != run["edited"].shape or not np.array_equal(run["stored"], run["edited"]):
        changed = "shape" if run["stored"].shape != run["edited"].shape else int((run["stored"] != run["edited"]).sum())
        problems.append(f"the stored final label differs from the edited segments ({changed} voxels)")
    if np.abs(run["storedIjkToRas"] - run["gridIjkToRas"]).max() > 1e-3:
        problems.append("the stored final label is not on the grid of the server's image")
    return problems
