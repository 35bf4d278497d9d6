"""The MedSegDiff module's work on the MRML scene: imports ``slicer``, ``vtk`` and ``MedSegDiffLib``, never Qt.

Runs inside 3D Slicer and on Slicer's libraries from PyPI (``slicer-core``), where tests/test_slicer_core_*.py
drive it against a real MONAI Label server.
"""

from .display import jumpToMostUncertainSlice, mostUncertainSlice, setSliceLayers, showUncertainty
from .fileio import SlicerUtilFileIO, StorageNodeFileIO, defaultFileIO
from .interactive import BACKGROUND_SCRIBBLE, FOREGROUND_SCRIBBLE, InteractiveCorrection
from .logic import FINAL_TAG, IMAGE_ID_ATTRIBUTE, MODULE_NAME, UNCERTAINTY_TAG, MedSegDiffLogic
from .segments import exportSegmentsOnGrid, ijkToRasArray, importLabelToSegmentation, labelColorTable

__all__ = [
    "BACKGROUND_SCRIBBLE",
    "FOREGROUND_SCRIBBLE",
    "FINAL_TAG",
    "IMAGE_ID_ATTRIBUTE",
    "InteractiveCorrection",
    "MODULE_NAME",
    "UNCERTAINTY_TAG",
    "MedSegDiffLogic",
    "SlicerUtilFileIO",
    "StorageNodeFileIO",
    "defaultFileIO",
    "exportSegmentsOnGrid",
    "ijkToRasArray",
    "importLabelToSegmentation",
    "jumpToMostUncertainSlice",
    "labelColorTable",
    "mostUncertainSlice",
    "setSliceLayers",
    "showUncertainty",
]
