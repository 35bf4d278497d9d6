"""What an infer request leaves behind, through the official ``MONAILabelClient`` and the real test server.

The result file reaches a client that keeps the default ``tmpdir`` (the system temporary folder, as 3D Slicer on
the server's own machine does), and the fused class probabilities are stored in the datastore on request.
"""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest

from monailabel.client import MONAILabelClient

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
FAST = {"num_inference_steps": 1, "num_ensemble": 2}


def _image(server, image_id: str) -> nib.Nifti1Image:
    return nib.load(str(server.datastore / f"{image_id}.nii.gz"))


def test_default_client_tmpdir_gets_a_result_file_that_stays(monailabel_server) -> None:
    """The client saves the result under the server's file name in the system temp folder: they must not collide."""
    client = MONAILabelClient(monailabel_server.url)  # default tmpdir
    path, result = client.infer(MODEL, "robex_head", dict(FAST))
    try:
        time.sleep(2.0)  # the server deletes its own result file once the answer is sent
        assert path is not None and os.path.isfile(path), f"the client's result file {path} is gone"
        img = nib.load(path)
        label = np.asarray(img.dataobj)
        image = _image(monailabel_server, "robex_head")
        assert label.shape == image.shape and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, image.affine, atol=1e-4)
        assert set(np.unique(label)) <= {0, 1} and int(label.sum()) == result["uncertainty"]["foreground_voxels"]
    finally:
        if path and os.path.isfile(path):
            os.remove(path)
