"""Showing the result in the slice views, with scene calls only (no ``slicer.app``, no Qt)."""

import numpy as np
import slicer
import vtk

from MedSegDiffLib import most_uncertain_slice, uncertainty_display_range

__all__ = ["UNCERTAINTY_COLOR_NODE_IDS", "jumpToMostUncertainSlice", "mostUncertainSlice", "setSliceLayers",
           "showUncertainty"]

UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRainbow")


def setSliceLayers(scene, background, foreground=None, opacity=None):
    """Background / foreground volume of every slice view (what ``slicer.util.setSliceViewerLayers`` sets)."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        if opacity is not None:
            composite.SetForegroundOpacity(opacity)


def showUncertainty(volumeNode, uncertaintyNode, threshold=None, window=None, opacity=0.5):
    """Show the uncertainty map as a colour overlay on the volume in the slice views.

    Args:
        volumeNode: background volume.
        uncertaintyNode: the uncertainty volume.
        threshold: values below it are transparent (None: no threshold).
        window: ``(low, high)`` colour range; robust default from the data when None.
        opacity: foreground opacity 0-1.
    """
    scene = uncertaintyNode.GetScene()
    uncertaintyNode.CreateDefaultDisplayNodes()
    displayNode = uncertaintyNode.GetDisplayNode()
    for colorNodeId in UNCERTAINTY_COLOR_NODE_IDS:
        if scene.GetNodeByID(colorNodeId):
            displayNode.SetAndObserveColorNodeID(colorNodeId)
            break
    values = slicer.util.arrayFromVolume(uncertaintyNode)
    low, high = window or uncertainty_display_range(values)
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(low, high)
    if threshold is None:
        displayNode.ApplyThresholdOff()
    else:
        displayNode.AutoThresholdOff()
        displayNode.SetLowerThreshold(threshold)
        displayNode.SetUpperThreshold(max(high, float(np.max(values))))
        displayNode.ApplyThresholdOn()
    setSliceLayers(scene, volumeNode, uncertaintyNode, opacity)


def mostUncertainSlice(uncertaintyNode):
    """``(k, ras)``: slice index (volume's K axis) with the most uncertainty and the RAS of its centre."""
    array = slicer.util.arrayFromVolume(uncertaintyNode)
    k = most_uncertain_slice(array, axis=0)
    ijkToRas = vtk.vtkMatrix4x4()
    uncertaintyNode.GetIJKToRASMatrix(ijkToRas)
    center = [(array.shape[2] - 1) / 2.0, (array.shape[1] - 1) / 2.0, float(k), 1.0]
    return k, list(ijkToRas.MultiplyPoint(center)[:3])


def jumpToMostUncertainSlice(uncertaintyNode):
    """Move all slice views to the most uncertain slice; returns ``(k, ras)``."""
    if uncertaintyNode is None:
        raise ValueError("No uncertainty map: run MedSegDiff first.")
    k, ras = mostUncertainSlice(uncertaintyNode)
    slicer.vtkMRMLSliceNode.JumpAllSlices(uncertaintyNode.GetScene(), ras[0], ras[1], ras[2])
    return k, ras
