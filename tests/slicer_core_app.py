"""3D Slicer's libraries (``slicer-core`` from PyPI) set up the way the Slicer application sets them up.

``SlicerCoreApp`` builds an MRML scene with Slicer's application logic, colour, volumes and segmentations
logics and the three slice views of the default layout (Red, Yellow, Green), and installs ``slicer.mrmlScene``
and ``slicer.modules.<name>.logic()`` as the application does at start-up, so ``slicer.util``'s array helpers
(``updateSegmentBinaryLabelmapFromArray`` ...) run unchanged. What it lacks is ``slicer.app`` and Qt.
"""

import sys
import types
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_ext" / "MedSegDiff"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's libraries from PyPI) is not installed")

SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


class SlicerCoreApp:
    """Scene and module logics of a Slicer application without its GUI."""

    def __init__(self):
        from MedSegDiffSceneLib import StorageNodeFileIO

        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.colorLogic = self.appLogic.GetColorLogic()
        self.colorLogic.SetMRMLScene(self.scene)
        self.colorLogic.AddDefaultColorNodes()
        self.appLogic.SetModuleLogic("Colors", self.colorLogic)
        self.volumesLogic = self._moduleLogic(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentationsLogic = self._moduleLogic(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self.fileIO = StorageNodeFileIO(self.volumesLogic)
        self._addSliceViews()
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(
            volumes=types.SimpleNamespace(logic=lambda: self.volumesLogic),
            segmentations=types.SimpleNamespace(logic=lambda: self.segmentationsLogic),
        )

    def _moduleLogic(self, logic, name):
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.appLogic)
        self.appLogic.SetModuleLogic(name, logic)
        return logic

    def _addSliceViews(self):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        for name, orientation in SLICE_VIEWS:
            sliceNode = self.scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
            sliceNode.SetLayoutName(name)
            sliceNode.SetOrientation(orientation)
            composite = self.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)

    def nodesByClass(self, className):
        nodes = self.scene.GetNodesByClass(className)
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    def sliceComposite(self, name="Red"):
        return next(n for n in self.nodesByClass("vtkMRMLSliceCompositeNode") if n.GetLayoutName() == name)

    def sliceNode(self, name="Red"):
        return next(n for n in self.nodesByClass("vtkMRMLSliceNode") if n.GetLayoutName() == name)
