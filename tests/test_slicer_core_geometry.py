"""The extension's Logic on 3D Slicer's own libraries (slicer-core): label import and export on real grids.

A label must come back from Slicer voxel-identical, on the server image's own grid, for right- and
left-handed (Slicer >= 5.8 flips the K axis of those when loading), oblique and anisotropic images; the
export leaves no temporary node in the scene; an empty segment exports as zeros. No server is needed: the
Logic gets a real ``ServerInfo`` and never sends a request here.
"""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from slicer_core_app import SlicerCoreApp, slicer

from MedSegDiffLib import MedSegDiffClient, ServerInfo  # noqa: E402
from MedSegDiffSceneLib import MedSegDiffLogic, ijkToRasArray  # noqa: E402

LABELS = {"brain": 1, "lesion": 2}
INFO = {
    "name": "MedSegDiff Label",
    "models": {"medsegdiff": {"type": "segmentation", "labels": LABELS,
                              "label_colors": {"brain": [0.9, 0.6, 0.2], "lesion": [0.1, 0.3, 1.0]}}},
    "trainers": {}, "strategies": {},
}  # fmt: skip
SHAPE_IJK = (12, 10, 8)


def _rotation_z(degrees):
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _affine(axes, spacing, origin=(-10.0, 20.0, -30.0)):
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(axes, float) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


GRIDS = {
    "RAS": _affine(np.eye(3), (1.5, 1.5, 1.5)),
    "LAS": _affine(np.diag([-1.0, 1, 1]), (1.5, 1.5, 1.5)),
    "LPS": _affine(np.diag([-1.0, -1, 1]), (1.0, 1.0, 1.0)),
    "oblique": _affine(_rotation_z(25), (1.0, 1.0, 1.0)),
    "oblique_left_handed_anisotropic": _affine(_rotation_z(-15) @ np.diag([1.0, 1, -1]), (0.7, 1.3, 3.0)),
}


def _label_ijk():
    """An asymmetric label ``[i, j, k]``: any axis flip or transpose changes it."""
    label = np.zeros(SHAPE_IJK, np.uint8)
    label[1:7, 2:8, 1:5] = 1
    label[2:4, 3:5, 5:7] = 2
    label[10, 0, 7] = 2
    return label


@pytest.fixture
def app():
    return SlicerCoreApp()


@pytest.fixture
def logic(app):
    logic = MedSegDiffLogic(app.scene, app.fileIO)
    logic.serverInfo = ServerInfo.from_json(INFO)
    logic.model = "medsegdiff"
    logic.client = MedSegDiffClient("http://127.0.0.1:9")  # never called here
    yield logic
    logic.cleanup()


def _server_files(tmp_path, affine):
    """An image and its label as the server stores them (NIfTI, nibabel) and the sample the Logic downloads."""
    image = np.arange(np.prod(SHAPE_IJK), dtype=np.int16).reshape(SHAPE_IJK)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(_label_ijk(), affine), str(tmp_path / "label.nii.gz"))
    download = tmp_path / "download"
    download.mkdir()
    shutil.copy(tmp_path / "img.nii.gz", download / "img.nii.gz")
    return {"id": "img", "path": str(download / "img.nii.gz")}, str(tmp_path / "label.nii.gz")


def _node_names(scene):
    """Every node but the built-in colour tables (the colour logic adds some of those lazily)."""
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return sorted(
        f"{n.GetClassName()} {n.GetName()}"
        for n in nodes
        if not (n.IsA("vtkMRMLColorNode") and n.GetType() != slicer.vtkMRMLColorTableNode.User)
    )


def _import(logic, volume, label_path):
    remote = {"imageId": "img", "labelPath": label_path, "uncertaintyPath": None, "folder": "/nonexistent"}
    return logic.importResults(volume, remote)["segmentation"]


@pytest.mark.parametrize("grid", GRIDS)
def test_label_round_trip_through_slicer_is_voxel_identical_on_the_server_grid(app, logic, tmp_path, grid):
    sample, label_path = _server_files(tmp_path, GRIDS[grid])
    volume = logic.loadSample(sample)
    if np.linalg.det(GRIDS[grid][:3, :3]) < 0:  # Slicer's own reader made the grid right-handed
        assert np.linalg.det(ijkToRasArray(volume)[:3, :3]) > 0
    segmentation = _import(logic, volume, label_path)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["brain", "lesion"]
    color = segmentation.GetSegmentation().GetSegment("lesion").GetColor()
    np.testing.assert_allclose(color, INFO["models"]["medsegdiff"]["label_colors"]["lesion"], atol=1e-6)
    nodes_before = _node_names(app.scene)

    path, skipped = logic.exportLabel(segmentation, volume)

    assert skipped == []
    assert _node_names(app.scene) == nodes_before, "the export left temporary nodes in the scene"
    written = nib.load(path)
    np.testing.assert_allclose(written.affine, GRIDS[grid], atol=1e-4)  # the server's label check compares these
    np.testing.assert_array_equal(np.asarray(written.dataobj), _label_ijk())


def test_every_server_label_gets_a_segment_and_undeclared_values_are_refused(app, logic, tmp_path):
    sample, label_path = _server_files(tmp_path, GRIDS["LAS"])
    volume = logic.loadSample(sample)
    brain_only = np.where(_label_ijk() == 1, 1, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain_only, GRIDS["LAS"]), label_path)
    segmentation = _import(logic, volume, label_path)
    lesion = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "lesion", volume)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2 and not lesion.any()  # to paint what was missed
    nib.save(nib.Nifti1Image((_label_ijk() * 3).astype(np.uint8), GRIDS["LAS"]), label_path)
    with pytest.raises(ValueError, match=r"values \[3, 6\]"):
        _import(logic, volume, label_path)


def test_edits_made_with_slicer_util_reach_the_exported_label(app, logic, tmp_path):
    sample, label_path = _server_files(tmp_path, GRIDS["LAS"])
    volume = logic.loadSample(sample)
    segmentation = _import(logic, volume, label_path)
    brain = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "brain", volume)  # [k, j, i], Slicer's grid
    brain[:, :, :] = 0
    brain[0, 0, 0] = 1  # one voxel at Slicer's IJK origin
    slicer.util.updateSegmentBinaryLabelmapFromArray(brain, segmentation, "brain", volume)
    empty = np.zeros_like(brain)
    slicer.util.updateSegmentBinaryLabelmapFromArray(empty, segmentation, "lesion", volume)

    path, _ = logic.exportLabel(segmentation, volume)

    written = nib.load(path)
    ras_of_voxel = ijkToRasArray(volume) @ np.array([0, 0, 0, 1.0])
    expected_index = np.rint(np.linalg.inv(written.affine) @ (np.diag([1, 1, 1, 1.0]) @ ras_of_voxel))[:3].astype(int)
    expected = np.zeros(SHAPE_IJK, np.uint8)
    expected[tuple(expected_index)] = 1
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)


def _empty_segments(logic, tmp_path, grid, names):
    """A loaded image with a segmentation holding only empty segments called ``names``."""
    sample, label_path = _server_files(tmp_path, GRIDS[grid])
    volume = logic.loadSample(sample)
    segmentation = _import(logic, volume, label_path)
    segmentation.GetSegmentation().RemoveAllSegments()
    for name in names:
        segmentation.GetSegmentation().AddEmptySegment(name, name)
    return volume, segmentation


def test_all_segments_empty_exports_an_empty_label(app, logic, tmp_path):
    volume, segmentation = _empty_segments(logic, tmp_path, "LAS", ["brain", "notes"])

    path, skipped = logic.exportLabel(segmentation, volume)

    assert skipped == ["notes"]
    written = nib.load(path)
    np.testing.assert_allclose(written.affine, GRIDS["LAS"], atol=1e-4)
    assert written.shape == SHAPE_IJK and not np.asarray(written.dataobj).any()


def test_no_segment_named_like_a_label_is_a_clear_error(app, logic, tmp_path):
    volume, segmentation = _empty_segments(logic, tmp_path, "RAS", ["notes"])
    with pytest.raises(ValueError, match="No segment is named like a server label"):
        logic.exportLabel(segmentation, volume)


def test_uncertainty_overlay_and_jump_use_the_scene(app, logic, tmp_path):
    sample, _ = _server_files(tmp_path, GRIDS["LAS"])
    volume = logic.loadSample(sample)
    uncertainty = np.zeros(SHAPE_IJK, np.float32)
    uncertainty[:, :, 6] = 0.9  # file slice k=6 is the most uncertain
    nib.save(nib.Nifti1Image(uncertainty, GRIDS["LAS"]), str(tmp_path / "u.nii.gz"))
    node = app.fileIO.loadVolume(str(tmp_path / "u.nii.gz"), "u")

    logic.showUncertainty(volume, node, threshold=0.1, opacity=0.4)
    k, ras = logic.jumpToMostUncertainSlice(node)

    composite = app.sliceComposite("Red")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (volume.GetID(), node.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert node.GetDisplayNode().GetApplyThreshold() and node.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.1)
    file_k = np.linalg.inv(GRIDS["LAS"]) @ np.array([*ras, 1.0])
    assert round(file_k[2]) == 6 and k in (6, SHAPE_IJK[2] - 1 - 6)
    offset = app.sliceNode("Red").GetSliceOffset()
    assert offset == pytest.approx(ras[2], abs=1e-3)


def test_temporary_files_are_removed(app, tmp_path):
    logic = MedSegDiffLogic(app.scene, app.fileIO)
    logic.serverInfo, logic.model = ServerInfo.from_json(INFO), "medsegdiff"
    logic.client = MedSegDiffClient("http://127.0.0.1:9")
    sample, label_path = _server_files(tmp_path, GRIDS["LAS"])
    volume = logic.loadSample(sample)
    assert not os.path.exists(os.path.dirname(sample["path"])), "the download stays on disk after loading"
    remote_folder = tmp_path / "remote"
    remote_folder.mkdir()
    shutil.copy(label_path, remote_folder / "label.nii.gz")
    remote = {"imageId": "img", "labelPath": str(remote_folder / "label.nii.gz"), "folder": str(remote_folder)}
    segmentation = logic.importResults(volume, remote)["segmentation"]
    assert not remote_folder.exists(), "the inference results stay on disk after importing them"
    path, _ = logic.exportLabel(segmentation, volume)
    logic.discard(path)
    assert os.listdir(logic.tempDir) == []
    logic.cleanup()
    assert not os.path.exists(logic.tempDir)
