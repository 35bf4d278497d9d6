"""The MONAI bundle export: ``monai.bundle run`` on the exported checkpoint gives the server's label.

The server (the shared session fixture) and the bundle segment the same datastore image with the same parameters
and seed; the bundle runs in its own process through ``python -m monai.bundle run``, as a user would. The app
also takes the bundle folder as a model (``--conf medsegdiff_checkpoint <bundle folder>``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monailabel.client import MONAILabelClient

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
IMAGE = "robex_head_lowres"
PARAMS = {"num_inference_steps": 1, "num_ensemble": 2, "seed": 3}
REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'lib'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(command, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def bundle(monailabel_server, tmp_path_factory) -> tuple[Path, Path]:
    """The bundle of the checkpoint the server infers with, and its label of IMAGE (a subprocess each)."""
    root = tmp_path_factory.mktemp("bundle")
    checkpoint = str(monailabel_server.checkpoint)
    _run([sys.executable, "-m", "medsegdiff.bundle", "export", checkpoint, str(root / "b")], REPO)
    (root / "images").mkdir()
    shutil.copy2(monailabel_server.datastore / f"{IMAGE}.nii.gz", root / "images")
    overrides = [arg for key, value in PARAMS.items() for arg in (f"--{key}", str(value))]
    _run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--dataset_dir", str(root / "images"), "--output_dir", str(root / "out"), *overrides],
        root / "b",
    )  # fmt: skip
    return root / "b", root / "out" / f"{IMAGE}_seg.nii.gz"


def test_bundle_has_the_monai_layout(bundle) -> None:
    import json

    folder, _ = bundle
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (folder / name).is_file(), name
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["labels"] == {"brain": 1} and metadata["network_data_format"]["outputs"]["pred"]["dtype"] == "uint8"


def test_bundle_label_is_the_server_label(monailabel_server, bundle, tmp_path) -> None:
    label_path, result = MONAILabelClient(monailabel_server.url, tmpdir=str(tmp_path)).infer(MODEL, IMAGE, dict(PARAMS))
    served = monailabel_server.checkpoint
    assert (result["checkpoint"]["file"], result["checkpoint"]["mtime"]) == (served.name, served.stat().st_mtime), "server retrained"
    server, ours = nib.load(label_path), nib.load(str(bundle[1]))
    server_label, bundle_label = np.asarray(server.dataobj), np.asarray(ours.dataobj)
    assert 0 < server_label.sum() < server_label.size, "a constant label would match anything"
    assert bundle_label.shape == server_label.shape and ours.get_data_dtype() == np.uint8
    np.testing.assert_allclose(ours.affine, server.affine, atol=1e-4)
    np.testing.assert_array_equal(bundle_label, server_label)


def test_the_app_serves_a_bundle_folder(monailabel_server, bundle, tmp_path) -> None:
    """A server started with ``--conf medsegdiff_checkpoint <bundle folder>`` infers with the bundle's model."""
    from conftest import make_datastore, start_server, stop_server

    folder, bundle_label = bundle
    server = start_server(tmp_path, make_datastore(tmp_path), conf={"medsegdiff_checkpoint": folder})
    try:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
        described = client.info()["models"][MODEL]["checkpoint"]
        model_file = folder / "models" / "model.pt"
        assert (described["file"], described["mtime"]) == (model_file.name, model_file.stat().st_mtime)
        label_path, _ = client.infer(MODEL, IMAGE, dict(PARAMS))
    finally:
        stop_server(server)
    served = np.asarray(nib.load(label_path).dataobj)
    np.testing.assert_array_equal(served, np.asarray(nib.load(str(bundle_label)).dataobj))


def test_a_folder_that_is_no_bundle_is_refused(tmp_path) -> None:
    sys.path.insert(0, str(REPO / "monailabel_app"))
    from lib.model_files import ModelFiles

    (tmp_path / "not_a_bundle").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MedSegDiff bundle"):
        ModelFiles.resolve(MODEL, tmp_path / "none.pt", tmp_path / "out", str(tmp_path / "not_a_bundle"), {})
