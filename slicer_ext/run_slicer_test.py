"""Run MedSegDiffTest inside 3D Slicer and exit with its result (0 = passed or skipped).

    MEDSEGDIFF_SERVER_URL=http://127.0.0.1:8000 Slicer --no-main-window \
        --additional-module-paths slicer_ext/MedSegDiff --python-script slicer_ext/run_slicer_test.py

Without MEDSEGDIFF_SERVER_URL the round trip is skipped with a message.
"""

import os
import sys
import unittest

import slicer

_script = globals().get("__file__") or (sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "")
_moduleDir = (
    os.path.join(os.path.dirname(os.path.abspath(_script)), "MedSegDiff")
    if _script
    else os.path.abspath(os.path.join("slicer_ext", "MedSegDiff"))
)
if _moduleDir not in sys.path:
    sys.path.insert(0, _moduleDir)

import MedSegDiff  # noqa: E402

_result = unittest.TextTestRunner(verbosity=2).run(
    unittest.defaultTestLoader.loadTestsFromTestCase(MedSegDiff.MedSegDiffTest)
)
slicer.util.exit(0 if _result.wasSuccessful() else 1)
