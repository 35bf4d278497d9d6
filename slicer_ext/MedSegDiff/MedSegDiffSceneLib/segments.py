"""Server labels <-> segmentation nodes, on Slicer's own segmentation logic.

Import: the server's label file is loaded as a labelmap volume (through the file IO seam, so it gets the grid
Slicer gives the image) and ``ImportLabelmapToSegmentationNode`` fills one segment per server label, named and
coloured from ``/info``, in a segmentation whose reference geometry is the loaded volume.

Export: ``ExportSegmentsToLabelmapNode`` writes the segments on the volume's grid through a colour table built
from the server's label names and values; the voxels are then put back on the grid of the server's image file
(``transfer_to_grid``: an exact reordering when Slicer flipped a left-handed image's K axis), so the label has
the image's own shape and affine.
"""

import numpy as np
import slicer
import vtk

from MedSegDiffLib import label_items, transfer_to_grid

__all__ = ["exportSegmentsOnGrid", "importLabelToSegmentation", "ijkToRasArray", "labelColorTable"]


def ijkToRasArray(volumeNode):
    """The volume's 4x4 IJK-to-RAS matrix as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def labelColorTable(scene, labels, colors, name="MedSegDiff labels"):
    """A colour table node (added to ``scene``) with one entry per server label at its value.

    Args:
        scene: the MRML scene.
        labels: ``{name: value}`` of the server.
        colors: ``{name: (r, g, b)}`` 0-1.
    """
    items = label_items(labels)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetHideFromEditors(True)
    table.SetNumberOfColors(max(value for _, value in items) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for labelName, value in items:
        r, g, b = colors.get(labelName, (0.5, 0.5, 0.5))
        table.SetColor(value, labelName, r, g, b, 1.0)
    return table


def importLabelToSegmentation(scene, fileIO, labelPath, volumeNode, labels, colors, name):
    """A segmentation node holding the server label ``labelPath``, one segment per declared label.

    Every declared label gets a segment (empty ones too, so the annotator can paint what the model missed); the
    segment ID and name are the label name. The temporary labelmap node is removed.

    Raises:
        ValueError: the label holds a value the server does not declare.
        RuntimeError: Slicer could not import the label.
    """
    items = label_items(labels)
    labelNode = fileIO.loadVolume(labelPath, f"{name} label", labelmap=True)
    try:
        present = {int(v) for v in np.unique(slicer.util.arrayFromVolume(labelNode))} - {0}
        unknown = sorted(present - {value for _, value in items})
        if unknown:
            raise ValueError(f"The server's label holds values {unknown} that its labels {dict(items)} do not declare.")
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        byValue = {value: labelName for labelName, value in items}
        for value in range(1, max(byValue) + 1):
            segmentIds.InsertNextValue(byValue.get(value, ""))  # label value v -> segment ID at v - 1
        for labelName, _ in items:
            segmentation.AddEmptySegment(labelName, labelName, list(colors.get(labelName, (0.5, 0.5, 0.5))))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelNode, segmentationNode, segmentIds
        ):
            scene.RemoveNode(segmentationNode)
            raise RuntimeError(f"Slicer could not import the label {labelPath} into a segmentation.")
    finally:
        _removeTemporary(scene, labelNode)
    return segmentationNode


def exportSegmentsOnGrid(segmentationNode, volumeNode, labels, colors, gridShape, gridIjkToRas):
    """The segments named like server labels as one label array on the server image's grid.

    Args:
        segmentationNode: the segmentation to export.
        volumeNode: the loaded volume (its grid is the export's reference geometry).
        labels: ``{name: value}`` of the server.
        colors: ``{name: (r, g, b)}`` of the server (for the colour table).
        gridShape: ``(k, j, i)`` of the server's image file.
        gridIjkToRas: its 4x4 IJK-to-RAS matrix.

    Returns:
        ``(array[k, j, i], skipped)``: server label values, and the names of segments that match no label.

    Raises:
        ValueError: no segment is named like a server label, or Slicer exported nothing.
    """
    scene = volumeNode.GetScene()
    segmentation = segmentationNode.GetSegmentation()
    segmentIds, skipped = vtk.vtkStringArray(), []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segmentName = segmentation.GetSegment(segmentId).GetName()
        if segmentName in labels:
            segmentIds.InsertNextValue(segmentId)
        else:
            skipped.append(segmentName)
    if segmentIds.GetNumberOfValues() == 0:
        raise ValueError(f"No segment is named like a server label ({', '.join(labels)}).")
    colorTable = labelColorTable(scene, labels, colors, name=f"{segmentationNode.GetName()} export colours")
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentationNode.GetName()} export")
    try:
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, segmentIds, labelNode, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
            colorTable,
        )
        image = labelNode.GetImageData()
        if not exported or image is None or image.GetPointData().GetScalars() is None:
            raise ValueError(
                f"Slicer could not export the segments of '{segmentationNode.GetName()}' on the grid of "
                f"'{volumeNode.GetName()}'. Check that the segmentation belongs to this volume."
            )
        array = np.array(slicer.util.arrayFromVolume(labelNode))
        onVolumeGrid = ijkToRasArray(labelNode)
    finally:
        _removeTemporary(scene, labelNode)
        scene.RemoveNode(colorTable)
    return transfer_to_grid(array, onVolumeGrid, gridIjkToRas, gridShape), skipped


def _removeTemporary(scene, node):
    """Remove a temporary node with its display nodes and the colour table Slicer made for it, if any."""
    displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
    for display in filter(None, displays):
        colorNode = display.GetColorNode()
        # ExportSegmentsToLabelmapNode gives its labelmap a new "<name>_ColorTable"; built-in tables are not User.
        if colorNode is not None and colorNode.GetType() == colorNode.User and not colorNode.GetSingletonTag():
            scene.RemoveNode(colorNode)
        scene.RemoveNode(display)
    storage = node.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)
