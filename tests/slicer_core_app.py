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


_usleep_holding_the_gil = __import__("ctypes").PyDLL(None).usleep  # PyDLL calls keep the GIL


def run_like_slicer(work, wait_s=None, interval_ms=None, timeout_s=600.0):
    """Drive ``work`` (a ``BackgroundWork``) the way 3D Slicer's main thread does; returns the seconds it took.

    Slicer's PythonQt holds the GIL while the Qt event loop idles: between two ticks of the widget's
    ``QTimer`` (``interval_ms``, default ``TIMER_INTERVAL_MS``) the main thread sits in C++ with the GIL held,
    which a ``PyDLL`` call reproduces. Each tick is the widget's timer callback, ``work.tick(wait_s)`` (default
    ``MAIN_THREAD_WAIT_S``). Stops once the work is done or after ``timeout_s`` seconds.
    """
    import time

    from MedSegDiffLib import MAIN_THREAD_WAIT_S, TIMER_INTERVAL_MS

    wait_s = MAIN_THREAD_WAIT_S if wait_s is None else wait_s
    interval_s = (TIMER_INTERVAL_MS if interval_ms is None else interval_ms) / 1000
    start = time.monotonic()
    next_tick = start + interval_s
    while work.active and time.monotonic() - start < timeout_s:
        idle = next_tick - time.monotonic()
        if idle > 0:
            _usleep_holding_the_gil(int(idle * 1e6))
        next_tick = max(next_tick + interval_s, time.monotonic())
        work.tick(wait_s)
    return time.monotonic() - start
