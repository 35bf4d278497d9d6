"""Where the infer task writes its result files: a temporary folder of the app's own.

MONAI Label answers an infer request with the result file under its base name and deletes the file once sent.
The official ``MONAILabelClient`` saves that answer under the same base name in its ``tmpdir``, which defaults
to the system temporary folder. Were the server's file in the system temporary folder too, a client on the same
machine (3D Slicer and the server on one workstation) would write its copy over the server's file, and the
server's clean-up would then delete the client's copy. Results are therefore written into a private folder
(``<system temp>/medsegdiff-results-*``, mode 0700, one per process, removed when the process exits).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

import nibabel as nib
import numpy as np

from medsegdiff.nifti import nifti_image

__all__ = ["result_dir", "save_result_nifti"]

_lock = threading.Lock()
_folder: str | None = None


def result_dir() -> str:
    """This process's private folder for result files (created on first use, removed at exit)."""
    global _folder
    with _lock:
        if _folder is None or not os.path.isdir(_folder):
            _folder = tempfile.mkdtemp(prefix="medsegdiff-results-")
            atexit.register(shutil.rmtree, _folder, True)
        return _folder


def save_result_nifti(array: np.ndarray, affine: np.ndarray, dtype: type) -> str:
    """Write ``array`` as ``dtype`` on ``affine`` to a new ``.nii.gz`` in :func:`result_dir`; returns its path."""
    fd, path = tempfile.mkstemp(suffix=".nii.gz", dir=result_dir())
    os.close(fd)
    nib.save(nifti_image(np.asarray(array, dtype=dtype), affine), path)
    return path
