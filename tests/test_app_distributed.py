"""The train task through MONAI Label's multi_gpu path: 2 CPU worker processes, gloo, DistributedSampler.

Runs ``python -m monailabel.interfaces.utils.app -m train`` (what the server's background task runs) with
``multi_gpu: true, gpus: "0,1"``: ``BasicTrainTask`` spawns 2 processes with ``torch.multiprocessing``, each
joins a gloo process group of world size 2, trains its share of the samples and validates; rank 0 writes the
checkpoints. Data: two slabs of the real ROBEX head, each with its brain mask as the final label.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_data import load_robex_head

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with the gloo backend is not available",
)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture(scope="module")
def slab_datastore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 18-slice axial slabs (1.5 mm, real T1) with their brain masks as final labels."""
    root = tmp_path_factory.mktemp("dist") / "datastore"
    scan = load_robex_head()
    for name, start in (("slab_a", 62), ("slab_b", 80)):
        shift = np.eye(4)
        shift[2, 3] = start  # the slab keeps its place in the world
        affine = scan.affine @ shift
        _save(scan.image[:, :, start : start + 18].astype(np.int16), affine, root / f"{name}.nii.gz")
        _save(scan.label[:, :, start : start + 18], affine, root / "labels" / "final" / f"{name}.nii.gz")
    return root


@pytest.mark.slow
def test_multi_gpu_path_trains_with_gloo_on_two_cpu_processes(slab_datastore: Path, tmp_path: Path) -> None:
    initial = tmp_path / "tiny.pt"
    tiny = MedSegDiffUNet(2, 1, 1, spatial_size=(32, 32), channels=(8, 16, 32), attention_levels=(False, False, True))
    save_checkpoint(
        initial, tiny, DiffusionConfig(num_train_timesteps=100, prediction_type="sample"), {"labels": {"brain": 1}, "trained": False}
    )
    model_dir = tmp_path / "models"
    conf = {"models": "medsegdiff", "medsegdiff_checkpoint": str(initial), "model_dir": str(model_dir)}
    request = {
        "model": "medsegdiff",
        "multi_gpu": True,
        "gpus": "0,1",  # world size 2; without CUDA the workers are CPU processes on gloo
        "max_epochs": 2,  # the ranks meet at a barrier after rank 0's checkpoints of epoch 1
        "samples_per_epoch": 8,
        "batch_size": 2,
        "val_split": 0.5,
        "val_num_inference_steps": 1,
        "val_num_ensemble": 2,
    }
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MONAI_LABEL_APP_CONF": json.dumps(conf),
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "monailabel.interfaces.utils.app", "-a", str(APP), "-s", str(slab_datastore),
           "-m", "train", "-r", json.dumps(request)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "Distributed/Multi GPU Training = TRUE" in log, log[-3000:]
    assert "Main Worker: 0" in log and "Main Worker: 1" in log, log[-3000:]

    files = model_dir / "medsegdiff"
    network, _, metadata = load_checkpoint(files / "last.pt")
    run = metadata["run"]
    assert run["backend"] == "gloo" and run["world_size"] == 2
    # the DistributedSampler split 8 samples over 2 ranks: 2 iterations of batch 2 on each, every epoch
    assert run["iterations_per_rank"] == [2, 2]
    assert run["train_images"] == 1 and run["val_images"] == 1
    assert metadata["epochs_trained"] == 2 and metadata["iterations_trained"] == 8
    # best.pt is the epoch with the highest validation Dice: never below the last epoch's
    best_dice = load_checkpoint(files / "best.pt")[2]["val_dice"]
    assert isinstance(metadata["val_dice"], float) and best_dice >= metadata["val_dice"]
    # training changed the weights
    changed = [not torch.equal(a, b) for a, b in zip(network.state_dict().values(), tiny.state_dict().values())]
    assert any(changed)
