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
from monailabel.client.client import MONAILabelClientException

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
FAST = {"num_inference_steps": 1, "num_ensemble": 2}


def _image(server, image_id: str) -> nib.Nifti1Image:
    return nib.load(str(server.datastore / f"{image_id}.nii.gz"))


@pytest.fixture(scope="module")
def default_client_result(monailabel_server):
    """Infer robex_head (no ``output_probability``) with a client that keeps the default ``tmpdir``; the result file
    is looked at 2 s after the answer: the server deletes its own result file once the answer is sent."""
    path, result = MONAILabelClient(monailabel_server.url).infer(MODEL, "robex_head", dict(FAST))
    time.sleep(2.0)
    exists = path is not None and os.path.isfile(path)
    try:
        yield path, exists, (np.asarray(nib.load(path).dataobj), nib.load(path)) if exists else None, result
    finally:
        if exists:
            os.remove(path)


def test_default_client_tmpdir_gets_a_result_file_that_stays(monailabel_server, default_client_result) -> None:
    """The client saves the result under the server's file name in the system temp folder: they must not collide."""
    path, exists, loaded, result = default_client_result
    assert exists, f"the client's result file {path} is gone"
    label, img = loaded
    image = _image(monailabel_server, "robex_head")
    assert label.shape == image.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, image.affine, atol=1e-4)
    assert set(np.unique(label)) <= {0, 1} and int(label.sum()) == result["uncertainty"]["foreground_voxels"]


def test_output_probability_stores_the_fused_probabilities(monailabel_server, tmp_path) -> None:
    client = MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path))
    label_path, result = client.infer(
        MODEL, "robex_head_lowres", {**FAST, "output_probability": True, "largest_component": False}
    )
    assert result["params"]["output_probability"] is True
    assert result["probability"] == {"classes": ["brain"], "channels": 1, "label_tag": "probability"}
    img = nib.load(client.download_label("robex_head_lowres", "probability"))
    probability = np.asarray(img.dataobj)
    image = _image(monailabel_server, "robex_head_lowres")
    assert probability.shape == image.shape and img.get_data_dtype() == np.float32  # one foreground class: 3D
    np.testing.assert_allclose(img.affine, image.affine, atol=1e-4)
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    label = np.asarray(nib.load(label_path).dataobj)
    assert 0 < label.sum() < label.size, "a constant label would match any probability map"
    np.testing.assert_array_equal(label, (probability > 0.5).astype(np.uint8))  # the label is the map thresholded
    # an entropy-like map in (0, 1) would be "thresholdable" too: the label's inside must be the likelier side
    assert probability[label == 1].mean() > 0.5 > probability[label == 0].mean()


def test_probabilities_are_stored_only_on_request(monailabel_server, default_client_result, tmp_path) -> None:
    result = default_client_result[-1]
    assert result["params"]["output_probability"] is False and "probability" not in result
    client = MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path))
    labels = client.datastore()["objects"]["robex_head"]["labels"]
    assert "uncertainty" in labels and "probability" not in labels
    with pytest.raises(MONAILabelClientException) as error:
        client.infer(MODEL, "robex_head", {**FAST, "output_probability": "maybe"})
    assert error.value.msg.startswith("Status: 422;") and "output_probability" in error.value.msg


def test_largest_component_keeps_the_biggest_piece_of_the_thresholded_probabilities(monailabel_server, tmp_path) -> None:
    """Default post-processing: the label is the largest 26-connected piece of probability > 0.5 (islands go)."""
    from scipy import ndimage

    client = MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path))
    label_path, result = client.infer(MODEL, "robex_head_lowres", {**FAST, "output_probability": True})
    assert result["params"]["largest_component"] is True  # the default
    probability = np.asarray(nib.load(client.download_label("robex_head_lowres", "probability")).dataobj)
    label = np.asarray(nib.load(label_path).dataobj)
    pieces, count = ndimage.label(probability > 0.5, structure=np.ones((3, 3, 3)))
    assert count > 1, "this case must have islands to show anything (1 step x 2 members of the sample model)"
    largest = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    np.testing.assert_array_equal(label, (pieces == largest).astype(np.uint8))
