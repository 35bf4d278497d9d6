"""Refine and Undo in the scene (``MedSegDiffSceneLib.interactive``) on 3D Slicer's libraries against the real server.

Points are markups control points placed in RAS, scribbles are segments painted with
``slicer.util.updateSegmentBinaryLabelmapFromArray``; what comes back is read from the segmentation with
``slicer.util`` and put on the server image's grid. The fastest parameters and the 3 mm sample image keep it quick.
"""

import nibabel as nib
import numpy as np
import pytest
from slicer_core_app import SlicerCoreApp, slicer

from MedSegDiffLib import MedSegDiffClient, transfer_to_grid  # noqa: E402
from MedSegDiffSceneLib import MedSegDiffLogic, ijkToRasArray  # noqa: E402
from MedSegDiffSceneLib.interactive import BACKGROUND_SCRIBBLE, FOREGROUND_SCRIBBLE  # noqa: E402

IMAGE = "robex_head_lowres"
LAS_IMAGE = "robex_head_flipped"
FAST = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 3}
pytestmark = pytest.mark.slow


def _load(logic, imageId, folder):
    return logic.loadSample({"id": imageId, "path": logic.client.download_image(imageId, str(folder))})


@pytest.fixture
def scene(monailabel_server, tmp_path):
    """A volume of the server loaded into the scene and its automatic result."""
    app = SlicerCoreApp()
    logic = MedSegDiffLogic(app.scene, app.fileIO)
    logic.connect(monailabel_server.url)
    volume = _load(logic, IMAGE, tmp_path / "download")
    result = logic.process(volume, dict(FAST))
    yield app, logic, volume, result
    logic.cleanup()


def _segment(logic, segmentation, volume, name="brain"):
    """A segment's voxels, read with slicer.util, on the server image's grid ``[k, j, i]``."""
    segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    voxels = np.asarray(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), np.uint8)
    shape, grid = logic.serverGrid(volume)
    return transfer_to_grid(voxels, ijkToRasArray(volume), grid, shape)


def _uncertainty(logic, node, volume):
    shape, grid = logic.serverGrid(volume)
    return transfer_to_grid(np.array(slicer.util.arrayFromVolume(node)), ijkToRasArray(node), grid, shape)


def _ras(logic, volume, kji):
    """RAS of a server-grid voxel ``[k, j, i]``."""
    _, grid = logic.serverGrid(volume)
    return list((grid @ [kji[2], kji[1], kji[0], 1.0])[:3])


def _most_uncertain(uncertainty, where):
    """``(k, j, i)`` of the most uncertain voxel among ``where``."""
    return tuple(int(c) for c in np.unravel_index(np.argmax(np.where(where, uncertainty, -1.0)), where.shape))


def _near(array, kji, r=2):
    return array[tuple(slice(max(c - r, 0), c + r + 1) for c in kji)]


def _segmentation_nodes(app):
    return app.nodesByClass("vtkMRMLSegmentationNode")


def test_positive_point_where_the_result_missed_joins_the_segment_in_place(scene):
    app, logic, volume, result = scene
    segmentation, uncertaintyNode = result["segmentation"], result["uncertainty"]
    segmentIds = [segmentation.GetSegmentation().GetNthSegmentID(i)
                  for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]  # fmt: skip
    color = segmentation.GetSegmentation().GetSegment("brain").GetColor()
    automatic = _segment(logic, segmentation, volume)
    uncertain = _uncertainty(logic, uncertaintyNode, volume)
    miss = _most_uncertain(uncertain, automatic == 0)
    assert automatic[miss] == 0 and uncertain[miss] > 0
    positive = logic.interactive.markupsNode(volume, positive=True)
    positive.AddControlPoint(_ras(logic, volume, miss), "P-1")

    refined = logic.refine(volume)

    assert refined["segmentation"] is segmentation and len(_segmentation_nodes(app)) == 1
    assert refined["uncertainty"].GetID() == uncertaintyNode.GetID()
    after = _segment(logic, segmentation, volume)
    assert after[miss] == 1, "the positive point's voxel is not in the segment"
    assert refined["result"]["params"]["foreground"] == [[miss[2], miss[1], miss[0]]]
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i)
           for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]  # fmt: skip
    assert ids == segmentIds and segmentation.GetSegmentation().GetSegment("brain").GetColor() == color
    refreshed = _uncertainty(logic, uncertaintyNode, volume)
    assert refreshed[miss] == 0.0, "a marked voxel is certain"
    assert not np.array_equal(_near(refreshed, miss), _near(uncertain, miss)), "the overlay is unchanged near the point"
    assert positive.GetNthControlPointLocked(0), "a sent point stays where the server has it"
    with pytest.raises(ValueError, match="Nothing new to refine"):
        logic.refine(volume)


def test_negative_point_then_undo_gives_back_the_automatic_result(scene):
    app, logic, volume, result = scene
    segmentation, uncertaintyNode = result["segmentation"], result["uncertainty"]
    automatic = _segment(logic, segmentation, volume)
    automaticUncertainty = _uncertainty(logic, uncertaintyNode, volume)
    hit = _most_uncertain(automaticUncertainty, automatic == 1)
    miss = _most_uncertain(automaticUncertainty, automatic == 0)
    positive, negative = (logic.interactive.markupsNode(volume, p) for p in (True, False))
    positive.AddControlPoint(_ras(logic, volume, miss), "P-1")
    logic.refine(volume)
    negative.AddControlPoint(_ras(logic, volume, hit), "N-1")
    logic.refine(volume)
    corrected = _segment(logic, segmentation, volume)
    assert corrected[hit] == 0 and corrected[miss] == 1

    logic.undo(volume)  # the negative point goes, the positive one stands
    assert negative.GetNumberOfControlPoints() == 0 and positive.GetNumberOfControlPoints() == 1
    once = _segment(logic, segmentation, volume)
    assert once[miss] == 1 and once[hit] == automatic[hit]

    undone = logic.undo(volume)  # nothing left: the automatic result, bit for bit
    assert undone["segmentation"] is segmentation and len(_segmentation_nodes(app)) == 1
    assert positive.GetNumberOfControlPoints() == 0 and not logic.interactive.canUndo(volume)
    np.testing.assert_array_equal(_segment(logic, segmentation, volume), automatic)
    np.testing.assert_array_equal(_uncertainty(logic, uncertaintyNode, volume), automaticUncertainty)
    with pytest.raises(ValueError, match="Nothing to undo"):
        logic.undo(volume)


def test_scribble_segments_give_their_voxels_the_marked_class(scene):
    app, logic, volume, result = scene
    segmentation = result["segmentation"]
    automatic = _segment(logic, segmentation, volume)
    k = automatic.shape[0] // 2
    line = np.zeros(automatic.shape, bool)
    line[k, automatic.shape[1] // 2, :] = True  # a stroke across the head: brain and background voxels
    wanted = {"foreground": line & (automatic == 0), "background": line & (automatic == 1)}
    assert wanted["foreground"].any() and wanted["background"].any()
    shape, grid = logic.serverGrid(volume)
    for name, kind in ((FOREGROUND_SCRIBBLE, "foreground"), (BACKGROUND_SCRIBBLE, "background")):
        segmentId = logic.interactive.scribbleSegment(segmentation, foreground=kind == "foreground")
        onVolume = transfer_to_grid(wanted[kind].astype(np.uint8), grid, ijkToRasArray(volume),
                                    slicer.util.arrayFromVolume(volume).shape)  # fmt: skip
        slicer.util.updateSegmentBinaryLabelmapFromArray(onVolume, segmentation, segmentId, volume)

    refined = logic.refine(volume)

    counts = refined["result"]["interaction"]["marked_voxels"]
    assert (counts["scribble_foreground"], counts["scribble_background"]) == (
        int(wanted["foreground"].sum()), int(wanted["background"].sum()))
    after = _segment(logic, segmentation, volume)
    assert np.all(after[wanted["foreground"]] == 1) and np.all(after[wanted["background"]] == 0)
    np.testing.assert_array_equal(_segment(logic, segmentation, volume, FOREGROUND_SCRIBBLE), wanted["foreground"])
    _, skipped = logic.exportLabel(segmentation, volume)
    assert skipped == [], "the scribble segments are marks, not labels to submit"

    logic.undo(volume)
    assert not _segment(logic, segmentation, volume, FOREGROUND_SCRIBBLE).any(), "the undone scribble is still shown"
    assert not _segment(logic, segmentation, volume, BACKGROUND_SCRIBBLE).any()
    np.testing.assert_array_equal(_segment(logic, segmentation, volume), automatic)


def test_points_of_a_left_handed_transformed_image_and_one_outside_it(monailabel_server, tmp_path):
    app = SlicerCoreApp()
    logic = MedSegDiffLogic(app.scene, app.fileIO)
    try:
        logic.connect(monailabel_server.url)
        volume = _load(logic, LAS_IMAGE, tmp_path / "download")
        image = nib.load(str(next(monailabel_server.datastore.glob(f"{LAS_IMAGE}.nii*"))))  # independent reader
        assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
        segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic.interactive.start(volume, segmentation, None, FAST)  # as importResults does, without inferring
        shift = np.array([5.0, -7.0, 11.0])
        transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        toParent = np.eye(4)
        toParent[:3, 3] = shift
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParent))
        volume.SetAndObserveTransformNodeID(transform.GetID())

        positive = logic.interactive.startPlacing(volume, positive=True)
        assert app.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton").GetActivePlaceNodeID() == positive.GetID()
        interaction = app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        assert interaction.GetCurrentInteractionMode() == interaction.Place
        ijk = [3, 40, image.shape[2] - 2]  # near the file's last k: Slicer flipped that axis on loading
        positive.AddControlPoint(list((image.affine @ [*ijk, 1.0])[:3] + shift), "P-1")
        assert logic.interactive.prepareRefine(volume)["params"]["foreground"] == [ijk]

        outside = [ijk[0], ijk[1], image.shape[2] + 1]
        positive.AddControlPoint(list((image.affine @ [*outside, 1.0])[:3] + shift), "P-far")
        logic.client = MedSegDiffClient("http://127.0.0.1:9")  # a request would fail with a ServerError
        with pytest.raises(ValueError, match=f"Positive point 'P-far' at RAS .* is outside the image '{LAS_IMAGE}'"):
            logic.refine(volume)
    finally:
        logic.cleanup()
