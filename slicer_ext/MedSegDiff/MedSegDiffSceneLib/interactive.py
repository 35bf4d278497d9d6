"""Interactive correction of the current result in the scene: points, scribbles, Refine and Undo, without Qt.

Marks: positive / negative points are the control points of two ``vtkMRMLMarkupsFiducialNode`` per image (green
/ red); scribbles are two extra segments of the result segmentation (``FOREGROUND_SCRIBBLE``,
``BACKGROUND_SCRIBBLE``) painted with the Segment Editor. A Refine sends the marks added since the last one as
ONE interaction of the image's ``InteractionHistory`` (with every mark still standing); Undo drops the last
interaction, sends the rest (none left: the automatic result again, bit for bit) and removes its marks from the
views. The answer updates the result's segmentation node and uncertainty volume in place.

As for inference, an action is three calls: ``prepareRefine`` / ``prepareUndo`` (main thread: reads the scene,
writes the scribble file), ``runRemote`` (thread-safe: the request) and ``importResults`` (main thread: updates
the nodes and keeps the new history); ``refine`` / ``undo`` chain them.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import slicer
import vtk

from MedSegDiffLib import InteractionHistory, ijk_point, label_in_values, read_image, transfer_to_grid

from .segments import exportSegmentsOnGrid, ijkToRasArray

__all__ = ["BACKGROUND_SCRIBBLE", "FOREGROUND_SCRIBBLE", "MARKS_ATTRIBUTE", "POINT_COLORS", "SCRIBBLE_SEGMENTS",
           "InteractiveCorrection"]  # fmt: skip

MARKS_ATTRIBUTE = "MedSegDiff.Marks"  # "positive" / "negative" on a markups node
MARKS_IMAGE_ATTRIBUTE = "MedSegDiff.MarksImageId"  # the image id whose result the points correct
POINT_COLORS = {"positive": (0.1, 0.8, 0.2), "negative": (0.95, 0.15, 0.15)}
FOREGROUND_SCRIBBLE = "MedSegDiff foreground scribble"
BACKGROUND_SCRIBBLE = "MedSegDiff background scribble"
SCRIBBLE_SEGMENTS = {FOREGROUND_SCRIBBLE: "foreground", BACKGROUND_SCRIBBLE: "background"}
_SCRIBBLE_COLORS = {FOREGROUND_SCRIBBLE: POINT_COLORS["positive"], BACKGROUND_SCRIBBLE: POINT_COLORS["negative"]}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class _Result:
    """The current result of one image: its nodes, the parameters that made it and the interactions on it."""

    segmentationId: str
    uncertaintyId: Optional[str]
    params: dict
    history: InteractionHistory


class InteractiveCorrection:
    """The interactions on the current result of each image, kept by a ``MedSegDiffLogic``.

    Args:
        logic: the Logic (server connection, scene, file IO, the volumes' server grids).
    """

    def __init__(self, logic):
        self.logic = logic
        self._results = {}

    # -- state ----------------------------------------------------------------------------------------

    def start(self, volumeNode, segmentationNode, uncertaintyNode, params):
        """A new automatic result of the volume's image (``importResults``): interactions start again from it."""
        imageId = self.logic.imageId(volumeNode)
        previous = self._results.get(imageId)
        if previous is not None:  # the points sent on the previous result mean nothing on this one
            self._removePoints([i.tag for i in previous.history.interactions])
        shape, _ = self.logic.serverGrid(volumeNode)
        self._results[imageId] = _Result(segmentationNode.GetID(), uncertaintyNode.GetID() if uncertaintyNode else None,
                                         dict(params or {}), InteractionHistory(shape))  # fmt: skip

    def history(self, volumeNode):
        """The ``InteractionHistory`` on the volume's current result, or None before a result."""
        result = self._results.get(self.logic.imageId(volumeNode)) if volumeNode is not None else None
        return result.history if result else None

    def canUndo(self, volumeNode):
        history = self.history(volumeNode)
        return history is not None and not history.is_empty()

    def _result(self, volumeNode):
        if volumeNode is None:
            raise ValueError("Select the volume whose result to refine.")
        result = self._results.get(self.logic.imageId(volumeNode))
        if result is None:
            raise ValueError(f"Run MedSegDiff on '{volumeNode.GetName()}' first: Refine corrects its result.")
        return result

    # -- marks in the scene ---------------------------------------------------------------------------

    def markupsNode(self, volumeNode, positive):
        """The volume's positive (green) or negative (red) points node, created when missing."""
        imageId, kind = self.logic.imageId(volumeNode), "positive" if positive else "negative"
        if not imageId:
            raise ValueError(f"'{volumeNode.GetName()}' is not on the server: run MedSegDiff on it first.")
        nodes = self.logic.scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
        for node in (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())):
            if node.GetAttribute(MARKS_IMAGE_ATTRIBUTE) == imageId and node.GetAttribute(MARKS_ATTRIBUTE) == kind:
                return node
        node = self.logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{volumeNode.GetName()} {kind} points")
        node.SetAttribute(MARKS_IMAGE_ATTRIBUTE, imageId)
        node.SetAttribute(MARKS_ATTRIBUTE, kind)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*POINT_COLORS[kind])
        node.GetDisplayNode().SetColor(*POINT_COLORS[kind])
        return node

    def startPlacing(self, volumeNode, positive):
        """Put the views into (persistent) point placement on the volume's positive / negative points node."""
        node = self.markupsNode(volumeNode, positive)
        selection = self.logic.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = self.logic.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)
        return node

    @staticmethod
    def scribbleSegment(segmentationNode, foreground=True):
        """ID of the foreground (or background) scribble segment of the result, added empty when missing."""
        name = FOREGROUND_SCRIBBLE if foreground else BACKGROUND_SCRIBBLE
        segmentation = segmentationNode.GetSegmentation()
        return segmentation.GetSegmentIdBySegmentName(name) or segmentation.AddEmptySegment(
            name, name, list(_SCRIBBLE_COLORS[name]))

    def _newPoints(self, volumeNode, positive, sent, rasToIjk, shape):
        """``(continuous IJK positions, [(node id, control point id)])`` of the points not sent yet."""
        node, positions, ids = self.markupsNode(volumeNode, positive), [], []
        toVolume = vtk.vtkGeneralTransform()  # markups are in world coordinates, the volume may be transformed
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), toVolume)
        for index in range(node.GetNumberOfControlPoints()):
            pointId = node.GetNthControlPointID(index)
            if (node.GetID(), pointId) in sent or node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
                continue
            world = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, world)
            ijk = (rasToIjk @ [*toVolume.TransformPoint(world), 1.0])[:3]
            try:
                ijk_point(ijk, shape)
            except ValueError as e:
                ras = ", ".join(f"{c:.1f}" for c in world)
                raise ValueError(
                    f"{'Positive' if positive else 'Negative'} point '{node.GetNthControlPointLabel(index)}' at RAS "
                    f"({ras}) is outside the image '{self.logic.imageId(volumeNode)}': {e}. Delete or move it."
                ) from None
            positions.append(list(ijk))
            ids.append((node.GetID(), pointId))
        return positions, ids

    def _scribbles(self, segmentationNode, volumeNode):
        """``{kind: bool mask}`` of the scribble segments on the server image's grid (empty without them)."""
        segmentation = segmentationNode.GetSegmentation()
        names = {n: v for n, v in ((FOREGROUND_SCRIBBLE, 1), (BACKGROUND_SCRIBBLE, 2))
                 if segmentation.GetSegmentIdBySegmentName(n)}  # fmt: skip
        if not names:
            return {}
        array, _ = exportSegmentsOnGrid(segmentationNode, volumeNode, names, _SCRIBBLE_COLORS,
                                        *self.logic.serverGrid(volumeNode))  # fmt: skip
        return {SCRIBBLE_SEGMENTS[n]: array == v for n, v in names.items()}

    # -- refine / undo --------------------------------------------------------------------------------

    def prepareRefine(self, volumeNode, params=None):
        """Main thread: the marks added since the last Refine as one interaction, and the request with all marks.

        Args:
            volumeNode: the volume whose current result to refine.
            params: parameters that replace those of the automatic result (e.g. ``{"click_radius": 2}``).

        Raises:
            ValueError: no result yet, nothing new marked, or a point outside the image (named), before any request.
        """
        result = self._result(volumeNode)
        segmentationNode = self._segmentation(volumeNode, result)
        shape, ijkToRas = self.logic.serverGrid(volumeNode)
        candidate = result.history.copy()
        sent = {point for interaction in candidate.interactions for point in interaction.tag}
        positive, positiveIds = self._newPoints(volumeNode, True, sent, np.linalg.inv(ijkToRas), shape)
        negative, negativeIds = self._newPoints(volumeNode, False, sent, np.linalg.inv(ijkToRas), shape)
        scribbles = self._scribbles(segmentationNode, volumeNode)
        new = {kind: mask & ~candidate.scribbled(kind) for kind, mask in scribbles.items()}
        tag = positiveIds + negativeIds  # the control points it came from: locked once sent, removed on undo
        if candidate.add(positive, negative, new.get("foreground"), new.get("background"), tag) is None:
            raise ValueError("Nothing new to refine with: add a positive or negative point, or paint a scribble.")
        return self._prepare(volumeNode, result, candidate, params, undone=None)

    def prepareUndo(self, volumeNode, params=None):
        """Main thread: the request without the last interaction (``ValueError`` when there is none)."""
        result = self._result(volumeNode)
        candidate = result.history.copy()
        undone = candidate.undo()
        if undone is None:
            raise ValueError(f"Nothing to undo on the result of '{volumeNode.GetName()}'.")
        return self._prepare(volumeNode, result, candidate, params, undone)

    def _prepare(self, volumeNode, result, candidate, params, undone):
        imageId = self.logic.imageId(volumeNode)
        _, ijkToRas = self.logic.serverGrid(volumeNode)
        os.makedirs(self.logic.tempDir, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="label_in-", dir=self.logic.tempDir)
        values = label_in_values(self.logic.serverInfo.model(self.logic.model))
        labelIn = candidate.write_label_in(_RAS_TO_LPS @ ijkToRas, os.path.join(folder, "label_in.nii.gz"), values)
        settings = {**result.params, **(params or {})}  # the next request keeps them (same seed, same radius)
        return {"imageId": imageId, "params": candidate.request(settings), "settings": settings, "labelIn": labelIn,
                "folder": folder, "history": candidate, "undone": undone}  # fmt: skip

    def runRemote(self, report, prepared):
        """Server part of a Refine / Undo (``MedSegDiffLogic.runRemote`` with the marks). Thread-safe."""
        try:
            return self.logic.runRemote(report, {"imageId": prepared["imageId"]}, prepared["params"],
                                        labelIn=prepared["labelIn"])  # fmt: skip
        finally:
            shutil.rmtree(prepared["folder"], ignore_errors=True)

    def importResults(self, volumeNode, prepared, remote):
        """Main thread: the answer into the result's segmentation and uncertainty nodes (in place); keeps the history.

        Returns:
            ``{"segmentation", "uncertainty" (or None), "result", "interactions" (how many stand)}``.
        """
        for warning in remote.get("warnings", []):
            logging.warning(f"MedSegDiff: {warning}")
        result = self._result(volumeNode)
        try:
            segmentationNode = self._segmentation(volumeNode, result)
            self._updateSegments(segmentationNode, volumeNode, remote["labelPath"])
            uncertaintyNode = self._updateUncertainty(volumeNode, result, remote.get("uncertaintyPath"))
        finally:
            shutil.rmtree(remote["folder"], ignore_errors=True)
        history = prepared["history"]
        if prepared["undone"] is not None:
            self._removePoints([prepared["undone"].tag])
            self._showStandingScribbles(segmentationNode, volumeNode, history, prepared["undone"])
        result.history, result.params = history, prepared["settings"]
        self._lockPoints([i.tag for i in history.interactions])
        return {"segmentation": segmentationNode, "uncertainty": uncertaintyNode, "result": remote.get("result", {}),
                "interactions": len(history.interactions)}  # fmt: skip

    def refine(self, volumeNode, params=None, progress=None):
        """Synchronous ``prepareRefine`` + ``runRemote`` + ``importResults``."""
        prepared = self.prepareRefine(volumeNode, params)
        return self.importResults(volumeNode, prepared, self.runRemote(progress or _noReport, prepared))

    def undo(self, volumeNode, params=None, progress=None):
        """Synchronous ``prepareUndo`` + ``runRemote`` + ``importResults``."""
        prepared = self.prepareUndo(volumeNode, params)
        return self.importResults(volumeNode, prepared, self.runRemote(progress or _noReport, prepared))

    # -- updating the scene ---------------------------------------------------------------------------

    def _segmentation(self, volumeNode, result):
        node = self.logic.scene.GetNodeByID(result.segmentationId)
        if node is None:
            raise ValueError(f"The result segmentation of '{volumeNode.GetName()}' was removed: run MedSegDiff again.")
        return node

    def _onVolumeGrid(self, path, volumeNode, targetNode=None):
        """A server file's voxels on the grid of ``targetNode`` (the volume by default): an exact reordering."""
        array, ijkToLps = read_image(path)
        target = targetNode or volumeNode
        shape = tuple(reversed(target.GetImageData().GetDimensions()))
        return transfer_to_grid(array, _RAS_TO_LPS @ ijkToLps, ijkToRasArray(target), shape)

    def _updateSegments(self, segmentationNode, volumeNode, labelPath):
        """Each server label's segment gets the new label's voxels (same node, segment IDs and colours)."""
        labels, colors = self.logic.serverInfo.labels(self.logic.model), self.logic.serverInfo.colors(self.logic.model)
        label = self._onVolumeGrid(labelPath, volumeNode)
        unknown = sorted({int(v) for v in np.unique(label)} - {0} - set(labels.values()))
        if unknown:
            raise ValueError(f"The server's label holds values {unknown} that its labels {labels} do not declare.")
        segmentation = segmentationNode.GetSegmentation()
        for name, value in labels.items():
            segmentId = segmentation.GetSegmentIdBySegmentName(name) or segmentation.AddEmptySegment(
                name, name, list(colors[name]))
            slicer.util.updateSegmentBinaryLabelmapFromArray((label == value).astype(np.uint8), segmentationNode,
                                                             segmentId, volumeNode)  # fmt: skip

    def _updateUncertainty(self, volumeNode, result, path):
        """The result's uncertainty volume gets the new voxels and its overlay is redrawn (created when missing)."""
        node = self.logic.scene.GetNodeByID(result.uncertaintyId) if result.uncertaintyId else None
        if path is None:
            return node
        if node is None:
            node = self.logic.fileIO.loadVolume(path, f"{volumeNode.GetName()} {self.logic.model} uncertainty")
            node.SetAttribute(self.logic.UNCERTAINTY_ATTRIBUTE, "1")
            result.uncertaintyId = node.GetID()
        else:
            slicer.util.updateVolumeFromArray(node, self._onVolumeGrid(path, volumeNode, node).astype(np.float32))
        node.StorableModified()
        self.logic.showUncertainty(volumeNode, node)
        return node

    def _controlPoints(self, tags):
        for node, pointId in (point for tag in tags for point in tag):
            node = self.logic.scene.GetNodeByID(node)
            index = node.GetNthControlPointIndexByID(pointId) if node is not None else -1
            if index >= 0:
                yield node, index

    def _removePoints(self, tags):
        for node, index in sorted(self._controlPoints(tags), key=lambda p: -p[1]):  # last first: indices stay valid
            node.RemoveNthControlPoint(index)

    def _lockPoints(self, tags):
        """Sent points are locked: moving one would not move the mark the server has."""
        for node, index in self._controlPoints(tags):
            node.SetNthControlPointLocked(index, True)

    def _showStandingScribbles(self, segmentationNode, volumeNode, history, undone):
        """Scribble segments after an undo: the undone voxels erased, the marks still standing shown."""
        shape, ijkToRas = self.logic.serverGrid(volumeNode)
        current = self._scribbles(segmentationNode, volumeNode)
        values = label_in_values(self.logic.serverInfo.model(self.logic.model))
        labelIn = history.label_in(values)
        for name, kind in SCRIBBLE_SEGMENTS.items():
            segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
            if kind not in current or getattr(undone, kind) is None or not segmentId:
                continue
            mask = current[kind] & ~getattr(undone, kind)
            if labelIn is not None:
                mask |= labelIn == values[kind]
            onVolume = transfer_to_grid(mask.astype(np.uint8), ijkToRas, ijkToRasArray(volumeNode),
                                        slicer.util.arrayFromVolume(volumeNode).shape)  # fmt: skip
            slicer.util.updateSegmentBinaryLabelmapFromArray(onVolume, segmentationNode, segmentId, volumeNode)


def _noReport(fraction=None, message=""):
    logging.debug(f"MedSegDiff: {message}")
