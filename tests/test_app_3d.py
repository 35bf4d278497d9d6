"""The 3D model (``--conf models medsegdiff_3d``): starts without a checkpoint, infers, trains, then serves the
trained checkpoint. The app object runs in-process (the server adds only HTTP around it) on two slabs of the
real ROBEX head; sampling uses 1 step and 2 members.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsegdiff.checkpoint import load_checkpoint
from medsegdiff.sample_data import load_robex_head
from monailabel.config import settings
from monailabel.interfaces.exception import MONAILabelException

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
FAST = {"num_inference_steps": 1, "num_ensemble": 2}


def _load_app_module():
    sys.path.insert(0, str(APP_DIR))
    try:
        spec = importlib.util.spec_from_file_location("medsegdiff_app_main", APP_DIR / "main.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(APP_DIR))


@pytest.fixture(scope="module")
def app_module():
    return _load_app_module()


@pytest.fixture
def quiet_settings(monkeypatch: pytest.MonkeyPatch):
    """No file watcher, no scoring request to a server that does not exist, one CPU thread (as the server tests)."""
    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slabs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 24-slice axial slabs of the ROBEX head (1.5 mm), the first with its brain mask as final label."""
    root = tmp_path_factory.mktemp("app3d") / "datastore"
    scan = load_robex_head()
    for name, start, labelled in (("slab_a", 58, True), ("slab_b", 82, False)):
        shift = np.eye(4)
        shift[2, 3] = start
        affine = scan.affine @ shift
        root.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(scan.image[:, :, start : start + 24].astype(np.int16), affine), str(root / f"{name}.nii.gz"))
        if labelled:
            (root / "labels" / "final").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(scan.label[:, :, start : start + 24], affine), str(root / "labels" / "final" / f"{name}.nii.gz"))
    return root


def test_unknown_model_name_is_refused_with_the_available_ones(app_module, tmp_path: Path, quiet_settings) -> None:
    with pytest.raises(MONAILabelException) as error:
        app_module.MedSegDiffApp(str(APP_DIR), str(tmp_path), {"models": "medsegdiff_4d"})
    assert "medsegdiff_4d" in error.value.msg and "medsegdiff_3d" in error.value.msg


@pytest.mark.slow
def test_3d_model_starts_untrained_infers_trains_and_serves_the_trained_checkpoint(
    app_module, slabs: Path, tmp_path: Path, quiet_settings
) -> None:
    model_dir = tmp_path / "models"
    app = app_module.MedSegDiffApp(str(APP_DIR), str(slabs), {"models": "medsegdiff_3d", "model_dir": str(model_dir)})
    files = model_dir / "medsegdiff_3d"
    assert (files / "initial.pt").is_file(), "no 3D checkpoint: a fresh one is written instead of failing"
    info = app.info()
    assert "UNTRAINED" in info["models"]["medsegdiff_3d"]["description"]
    assert info["models"]["medsegdiff_3d"]["checkpoint"]["spatial_dims"] == 3

    result = app.infer({"model": "medsegdiff_3d", "image": "slab_b", **FAST})
    image = nib.load(str(slabs / "slab_b.nii.gz"))
    label = nib.load(result["file"])
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert result["params"]["checkpoint"]["file"] == "initial.pt"
    assert result["params"]["checkpoint"]["mtime"] == (files / "initial.pt").stat().st_mtime

    stats = app.train({
        "model": "medsegdiff_3d", "max_epochs": 1, "samples_per_epoch": 2, "batch_size": 2, "multi_gpu": False,
        "val_num_inference_steps": 1, "val_num_ensemble": 2,
    })  # fmt: skip
    assert stats["epoch"] == 1
    # the reported best metric is the validation Dice stored in the checkpoint published as best
    assert stats["best_metric"] == pytest.approx(load_checkpoint(files / "best.pt")[2]["val_dice"], abs=1e-6)
    assert "UNTRAINED" not in app.info()["models"]["medsegdiff_3d"]["description"]
    again = app.infer({"model": "medsegdiff_3d", "image": "slab_b", **FAST})
    assert again["params"]["checkpoint"]["file"] == "best.pt"
    assert again["params"]["checkpoint"]["mtime"] == (files / "best.pt").stat().st_mtime
    assert again["params"]["checkpoint"]["epochs_trained"] == 1
