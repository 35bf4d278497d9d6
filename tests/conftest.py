"""Shared fixtures: a real MONAI Label server running the MedSegDiff app on a copy of the sample datastore.

``monailabel_server`` (session scope) yields an object with

- ``url``: ``http://127.0.0.1:PORT``
- ``datastore``: ``pathlib.Path`` of the temporary datastore the server uses
- ``reference_dir``: the sample reference masks (``<id>_mask.nii.gz``), next to the datastore
- ``log_path``: the server's stdout + stderr
- ``model_dir``: where the server writes trained checkpoints (``<model>/best.pt``, ``last.pt``)
- ``checkpoint``: the initial checkpoint of ``medsegdiff`` (the committed one, or an untrained dev one)
- ``trained_checkpoint``: True when that is the committed, trained sample model

The sample files come from ``data/sample_datastore`` when it holds an unedited copy, else they are built with
``medsegdiff.sample_data.build_sample_datastore``. Until ``monailabel_app/model/medsegdiff_brain_2d.pt`` exists
the server runs an untrained small network (tests that need a trained model skip, saying so). The server gets
``OMP_NUM_THREADS=1`` unless set (on a busy 2-core machine more threads are slower), and automatic scoring
off (``MONAI_LABEL_AUTO_UPDATE_SCORING=false``) so that tests decide when the CPU scores images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
COMMITTED_CHECKPOINT = APP_DIR / "model" / "medsegdiff_brain_2d.pt"
SAMPLE_DATASTORE = REPO / "data" / "sample_datastore"
START_TIMEOUT_S = 180


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~30 s (still run in CI)")


@dataclass
class MonaiLabelServer:
    url: str
    datastore: Path
    reference_dir: Path
    log_path: Path
    model_dir: Path
    checkpoint: Path
    trained_checkpoint: bool
    process: subprocess.Popen = field(repr=False)

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_sample_files(target: Path) -> bool:
    """Copy the sample images, final labels and reference masks of ``data/sample_datastore`` into ``target``.

    Only files the manifest lists are copied, and only when every sample label is unedited (its sha256 is the
    one the builder wrote); returns False when that copy cannot be trusted.
    """
    from medsegdiff.sample_data import read_manifest

    manifest = read_manifest(SAMPLE_DATASTORE)
    if manifest is None:
        return False
    files = []
    for entry in manifest["items"].values():
        files += [entry["image"], entry["reference_mask"]]
        if entry.get("label"):
            label = SAMPLE_DATASTORE / entry["label"]
            if not label.is_file() or hashlib.sha256(label.read_bytes()).hexdigest() != entry.get("label_sha256"):
                return False
            files.append(entry["label"])
    if not all((SAMPLE_DATASTORE / f).is_file() for f in files):
        return False
    for name in [*files, "sample_manifest.json"]:
        destination = (target / name).resolve()
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SAMPLE_DATASTORE / name, destination)
    return True


def _dev_checkpoint(path: Path) -> Path:
    """An untrained small 2D network with the sample model's configuration (for a server without the committed one)."""
    import torch

    from medsegdiff.checkpoint import save_checkpoint
    from medsegdiff.diffusion import DiffusionConfig
    from medsegdiff.network import MedSegDiffUNet

    torch.manual_seed(0)
    network = MedSegDiffUNet(
        2, 1, 1, spatial_size=(80, 80), channels=(16, 32, 64, 128), attention_levels=(False, False, False, True)
    )
    metadata = {"spacing": [3.0, 3.0, 3.0], "slice_axis": 2, "labels": {"brain": 1}, "trained": False}
    return save_checkpoint(path, network, DiffusionConfig(prediction_type="sample"), metadata)


@pytest.fixture(scope="session")
def monailabel_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("monailabel")
    datastore = root / "datastore"
    if not _copy_sample_files(datastore):
        from medsegdiff.sample_data import build_sample_datastore

        build_sample_datastore(datastore)
    trained = COMMITTED_CHECKPOINT.is_file()
    checkpoint = COMMITTED_CHECKPOINT if trained else _dev_checkpoint(root / "dev_medsegdiff_2d.pt")
    model_dir = root / "models"
    port = _free_port()
    command = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(APP_DIR), "--studies", str(datastore),
        "--conf", "models", "medsegdiff",
        "--conf", "model_dir", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if not trained:
        command += ["--conf", "medsegdiff_checkpoint", str(checkpoint)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = MonaiLabelServer(
        url=f"http://127.0.0.1:{port}",
        datastore=datastore,
        reference_dir=datastore.parent / "sample_reference",
        log_path=log_path,
        model_dir=model_dir,
        checkpoint=checkpoint,
        trained_checkpoint=trained,
        process=process,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {process.returncode}; log:\n{server.log()}")
            try:
                if requests.get(f"{server.url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server did not answer /info/ within {START_TIMEOUT_S} s; log:\n{server.log()}")
            time.sleep(1)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and what it started (training / scoring subprocesses share its process group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
