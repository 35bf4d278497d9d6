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

import numpy as np
from isal import igzip

from medsegdiff.nifti import nifti_image

__all__ = ["result_dir", "save_result_nifti", "probability_volume"]

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
    """Write ``array`` as ``dtype`` on ``affine`` to a new ``.nii.gz`` in :func:`result_dir`; returns its path.

    nibabel serialises the image, ISA-L's gzip compresses it (level 1, as nibabel's default): a standard gzip
    stream, 6x faster than zlib, which an interaction pays at every click for the label and the uncertainty.
    """
    fd, path = tempfile.mkstemp(suffix=".nii.gz", dir=result_dir())
    with os.fdopen(fd, "wb") as file:
        file.write(igzip.compress(nifti_image(np.asarray(array, dtype=dtype), affine).to_bytes(), compresslevel=1))
    return path


def probability_volume(probs: np.ndarray) -> np.ndarray:
    """Fused foreground probabilities ``(C, X, Y, Z)`` → the stored layout: ``(X, Y, Z)`` for one class, else
    ``(X, Y, Z, C)`` (channel c is class c + 1 in label order; background is 1 - their sum)."""
    probs = np.asarray(probs, dtype=np.float32)
    return probs[0] if probs.shape[0] == 1 else np.moveaxis(probs, 0, -1)
