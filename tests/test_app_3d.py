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


@pytest.mark.slow
def test_3d_clicks_resample_only_the_windows_around_them(app_module, slabs: Path, tmp_path: Path, quiet_settings) -> None:
    """slab_b is 58 x 75 x 12 voxels on the 3 mm model grid (padded to 48 slices): four 48³ windows; a click
    in a corner of the slab touches one of them."""
    app = app_module.MedSegDiffApp(str(APP_DIR), str(slabs), {"models": "medsegdiff_3d", "model_dir": str(tmp_path)})
    request = {"model": "medsegdiff_3d", "image": "slab_b", **FAST, "seed": 3}
    plain = app.infer(request)
    assert plain["params"]["interaction"]["resampled_box"] == "all"
    label = np.asarray(nib.load(plain["file"]).dataobj)
    corner = (slice(4, 14), slice(4, 20), slice(None))  # 2 .. 7 model voxels from two faces of the slab
    first = [int(c) for c in np.argwhere(label[corner] == 0)[0]]
    first = [first[0] + 4, first[1] + 4, first[2]]
    clicked = app.infer({**request, "foreground": [first]})
    assert np.asarray(nib.load(clicked["file"]).dataobj)[tuple(first)] == 1
    label = np.asarray(nib.load(clicked["file"]).dataobj)
    second = [int(c) for c in np.argwhere(label[corner] == 0)[-1]]
    second = [second[0] + 4, second[1] + 4, second[2]]

    again = app.infer({**request, "foreground": [first, second]})  # the second click
    corrected = np.asarray(nib.load(again["file"]).dataobj)
    assert corrected[tuple(first)] == 1 and corrected[tuple(second)] == 1
    info = again["params"]["interaction"]
    assert (info["resampled_windows"], info["windows"]) == (1, 4)
    assert 0 < again["params"]["nfe"] * 4 == plain["params"]["nfe"]
    assert 0 < info["resampled_fraction"] < 1 and len(info["resampled_box"]) == 3

    same = app.infer({**request, "foreground": [first, second]})  # nothing changed: the cached result
    assert same["params"]["nfe"] == 0 and same["params"]["interaction"]["resampled_windows"] == 0
    assert np.array_equal(np.asarray(nib.load(same["file"]).dataobj), corrected)

    # a foreground click only adds foreground (the locality rule); a full run with both clicks starts afresh
    assert np.all(corrected[corrected != label] == 1) and (corrected != label).any()
    app.models["medsegdiff_3d"].infer().results.clear()
    full = app.infer({**request, "foreground": [first, second]})
    assert full["params"]["interaction"]["resampled_box"] == "all"
