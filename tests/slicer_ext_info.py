"""What the Slicer extension's tests share: its paths, ``MedSegDiffLib`` imported from them, and the ``/info`` of a
MONAI Label server serving MedSegDiff."""

import sys
from pathlib import Path

EXT_DIR = Path(__file__).resolve().parents[1] / "slicer_ext"
MODULE_DIR = EXT_DIR / "MedSegDiff"
LIB_DIR = MODULE_DIR / "MedSegDiffLib"
SCENE_LIB_DIR = MODULE_DIR / "MedSegDiffSceneLib"
MODULE_FILE = MODULE_DIR / "MedSegDiff.py"
LOGIC_FILE = SCENE_LIB_DIR / "logic.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSegDiff.ui"
SLICER_ONLY_MODULES = {"slicer", "qt", "vtk", "ctk"}

sys.path.insert(0, str(MODULE_DIR))
import MedSegDiffLib as lib  # noqa: E402, F401 (re-exported)
from MedSegDiffLib.controls import buttonStates  # noqa: E402, F401 (re-exported)

PY_FILES = sorted(EXT_DIR.rglob("*.py"))
LIB_FILES = sorted(LIB_DIR.rglob("*.py"))
SCENE_LIB_FILES = sorted(SCENE_LIB_DIR.rglob("*.py"))
WIDGET_FILES = [MODULE_FILE, *sorted((MODULE_DIR / "MedSegDiffWidgetLib").rglob("*.py"))]
MAX_LINES = 400

MEDSEGDIFF_INFO = {
    "name": "MedSegDiff Label",
    "version": "0.1.0",
    "labels": ["brain"],
    "models": {
        "medsegdiff": {
            "type": "segmentation",
            "labels": {"brain": 1},
            "dimension": 3,
            "description": "MedSegDiff",
            "config": {
                "num_inference_steps": 10,
                "num_ensemble": 5,
                "sampler": ["ddim", "ddpm"],
                "seed": 0,
                "device": ["cpu", "cuda"],
            },
        }
    },
    "trainers": {"medsegdiff": {"config": {"max_epochs": 10}}},
    "strategies": {"uncertainty": {}, "random": {}},
    "scoring": {"medsegdiff_uncertainty": {}},
}

