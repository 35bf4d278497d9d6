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
from collections.abc import Callable, Mapping
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
    datastore: Path | str
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


def dev_checkpoint(path: Path, **network: object) -> Path:
    """An untrained network with the sample model's configuration (for a server without the committed one);
    ``network`` overrides ``MedSegDiffUNet`` arguments (e.g. ``guidance_channels=2``)."""
    import torch

    from medsegdiff.checkpoint import save_checkpoint
    from medsegdiff.network import MedSegDiffUNet
    from medsegdiff.sample_model import SAMPLE_MODEL_2D, SAMPLE_SLICE_AXIS, SAMPLE_SPACING_MM, sample_diffusion_config

    torch.manual_seed(0)
    network = MedSegDiffUNet(**{**SAMPLE_MODEL_2D, **network})
    metadata = {
        "spacing": [SAMPLE_SPACING_MM] * 3, "slice_axis": SAMPLE_SLICE_AXIS, "labels": {"brain": 1}, "trained": False
    }
    return save_checkpoint(path, network, sample_diffusion_config(), metadata)


def make_datastore(root: Path) -> Path:
    """A fresh copy of the sample datastore under ``root`` (reference masks in ``root/sample_reference``)."""
    datastore = root / "datastore"
    if not _copy_sample_files(datastore):
        from medsegdiff.sample_data import build_sample_datastore

        build_sample_datastore(datastore)
    return datastore


def _answers_info(response: requests.Response) -> bool:
    return response.status_code == 200


def start_server(
    root: Path,
    datastore: Path | str,
    env: Mapping[str, str] | None = None,
    drop_env_prefixes: tuple[str, ...] = (),
    is_up: Callable[[requests.Response], bool] = _answers_info,
    timeout_s: float = START_TIMEOUT_S,
    initial_checkpoint: Path | None = None,
    conf: Mapping[str, str] | None = None,
) -> MonaiLabelServer:
    """Start ``monailabel start_server`` on ``datastore`` with the MedSegDiff app; return once it is up.

    ``datastore`` is a folder, or the URL of a DICOMweb service (``tests/pacs_fixtures.py``).

    Checkpoints go to ``root/models``; the log ``root/server.log`` is appended to, so a restarted server on the
    same datastore keeps one log. ``env`` is added to this process's environment after removing the variables
    that start with one of ``drop_env_prefixes``; ``is_up(response of GET /info/)`` says when it is ready
    (``200`` by default); ``conf`` adds app ``--conf KEY VALUE`` pairs; ``initial_checkpoint`` replaces the
    committed sample model as the served one. Stop it with :func:`stop_server` or :func:`kill_server`.
    """
    trained = COMMITTED_CHECKPOINT.is_file() and initial_checkpoint is None
    checkpoint = initial_checkpoint or COMMITTED_CHECKPOINT
    if not trained and initial_checkpoint is None:
        checkpoint = root / "dev_medsegdiff_2d.pt"
        if not checkpoint.is_file():
            dev_checkpoint(checkpoint)
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
    for key, value in (conf or {}).items():
        command += ["--conf", key, str(value)]
    full_env = {k: v for k, v in os.environ.items() if not (drop_env_prefixes and k.startswith(drop_env_prefixes))}
    full_env = {
        **full_env,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    server = MonaiLabelServer(
        url=f"http://127.0.0.1:{port}",
        datastore=datastore,
        reference_dir=(datastore.parent if isinstance(datastore, Path) else root) / "sample_reference",
        log_path=log_path,
        model_dir=model_dir,
        checkpoint=checkpoint,
        trained_checkpoint=trained,
        process=process,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"MONAI Label server exited with {process.returncode}; log:\n{server.log()}")
        try:
            if is_up(requests.get(f"{server.url}/info/", timeout=5)):
                return server
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            pytest.fail(f"MONAI Label server did not come up within {timeout_s} s; log:\n{server.log()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def monailabel_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("monailabel")
    server = start_server(root, make_datastore(root))
    try:
        yield server
    finally:
        stop_server(server)


def stop_server(server: MonaiLabelServer) -> None:
    """Stop the server and what it started (training / scoring subprocesses share its process group)."""
    _stop(server.process)


def kill_server(server: MonaiLabelServer) -> None:
    """SIGKILL the server and everything it started (its own process group): no handler, no cleanup runs."""
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait(timeout=30)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process``, SIGKILL it when it does not end within 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
