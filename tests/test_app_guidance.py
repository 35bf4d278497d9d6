"""A served network with guidance channels, through the real server: clicks reach it, and the train task
trains the guidance path (simulated clicks), so the retrained model keeps it.

Its own server (an untrained guided network as the served model), since it replaces the served checkpoint.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import dev_checkpoint, make_datastore, start_server, stop_server
from medsegdiff.checkpoint import read_checkpoint
from monailabel.client import MONAILabelClient
from test_reliability_crash import start_training, wait_for_training

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
IMAGE = "robex_head_lowres"
FAST = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 3}


def test_guided_model_takes_clicks_and_retrains_with_them(tmp_path):
    server = start_server(tmp_path, make_datastore(tmp_path), initial_checkpoint=dev_checkpoint(tmp_path / "guided.pt", guidance_channels=2))
    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
        path, _ = client.infer(MODEL, IMAGE, dict(FAST))
        k = nib.load(path).shape[2] // 2
        clicks = {"foreground": [[20, 30, k]], "background": [[5, 5, k]]}
        path, result = client.infer(MODEL, IMAGE, {**FAST, **clicks})
        label = np.asarray(nib.load(path).dataobj)
        assert label[20, 30, k] == 1 and label[5, 5, k] == 0, result.get("interaction")

        start_training(server, max_epochs=1)
        task = wait_for_training(server)
        assert task["status"] == "DONE", f"{task.get('status')}: {task.get('details')}\n{server.log()[-3000:]}"
        trained = read_checkpoint(server.model_dir / MODEL / "last.pt")
        assert trained["network_config"]["guidance_channels"] == 2, trained["network_config"]
        assert trained["metadata"]["epochs_trained"] == 1
    finally:
        stop_server(server)
