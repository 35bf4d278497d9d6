"""Crashes: a training process killed mid-epoch, and a server killed (SIGKILL) while it saves a label.

Each test starts its own MONAI Label server (the same command as the session fixture of tests/conftest.py) on
a temporary copy of the sample datastore, since it kills processes the shared server needs.

* Training: SIGKILL of the training subprocess mid-epoch leaves ``last.pt`` and the served ``best.pt`` loadable,
  and the next ``POST /train/medsegdiff`` resumes from ``last.pt`` (its epoch count goes on from the saved one).
  Meanwhile a loop loads both checkpoint files with ``load_checkpoint`` as fast as it can: never an error.
* Labels: the server is killed at several moments of ``PUT /datastore/label`` of a large label (one of them as
  soon as anything is written into ``labels/final``). After a restart on the same datastore the label is the
  old or the new one byte for byte, loads with nibabel, and no temporary file shows up as an image or a label.
  This needs ``SafeLocalDatastore`` wired in ``monailabel_app/main.py`` (init_datastore): MONAI Label's own
  datastore truncates the label file and then copies into it.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests

from conftest import MonaiLabelServer, dev_checkpoint, kill_server, make_datastore, start_server, stop_server
from medsegdiff.checkpoint import load_checkpoint, read_checkpoint

pytestmark = pytest.mark.slow

MODEL = "medsegdiff"
LABELLED = "robex_head"  # has a final label in the sample datastore
TASK_TIMEOUT_S = 300
# cheap epochs: 2 iterations of 4 slices, a 1-step 1-member validation (about 3 s on a busy 2-core CPU)
TRAIN_PARAMS = {
    "samples_per_epoch": 8,
    "batch_size": 4,
    "learning_rate": 1e-6,
    "val_num_inference_steps": 1,
    "val_num_ensemble": 1,
}


# ---------------------------------------------------------------------------------------------- helpers
def train_process(server: MonaiLabelServer) -> psutil.Process | None:
    """The training subprocess MONAI Label started (``python -m monailabel.interfaces.utils.app -m train``)."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if "monailabel.interfaces.utils.app" in command and "train" in command:
            return child
    return None


def train_status(server: MonaiLabelServer) -> dict:
    response = requests.get(f"{server.url}/train/", timeout=30)
    return response.json() if response.status_code == 200 else {}


def wait_for_training(server: MonaiLabelServer, timeout: float = TASK_TIMEOUT_S) -> dict:
    """Poll ``GET /train/`` until the task ends; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = train_status(server)
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(0.5)
    pytest.fail(f"training did not end within {timeout} s; log:\n{server.log()}")


def start_training(server: MonaiLabelServer, **params) -> None:
    response = requests.post(f"{server.url}/train/{MODEL}", json={**TRAIN_PARAMS, **params}, timeout=30)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------- training
class CheckpointReader(threading.Thread):
    """Loads each existing checkpoint file with ``load_checkpoint`` in a loop; keeps the errors and versions seen."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.stop = threading.Event()
        self.loads = 0
        self.errors: list[str] = []
        self.versions: dict[str, set] = {p.name: set() for p in paths}

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.paths:
                if not path.is_file():  # not written yet (files are replaced, never removed)
                    continue
                try:
                    _, _, metadata = load_checkpoint(path)
                except Exception as e:  # noqa: BLE001 - any failure to load is what this test looks for
                    self.errors.append(f"{path.name}: {e.__class__.__name__}: {e}")
                    continue
                self.loads += 1
                self.versions[path.name].add((metadata.get("epochs_trained"), metadata.get("saved_at"), metadata.get("val_dice")))
            time.sleep(0.02)


def _epochs(path: Path) -> int:
    return int(read_checkpoint(path)["metadata"]["epochs_trained"])


def _optimizer_steps(path: Path) -> int:
    state = read_checkpoint(path)["training_state"]["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


def test_training_killed_mid_epoch_resumes_from_last_checkpoint_and_the_served_file_stays_whole(tmp_path, capsys):
    # an untrained served model: every run's first validated epoch publishes best.pt
    server = start_server(tmp_path, make_datastore(tmp_path), initial_checkpoint=dev_checkpoint(tmp_path / "dev.pt"))
    folder = server.model_dir / MODEL
    last, best = folder / "last.pt", folder / "best.pt"
    reader = CheckpointReader([best, last])
    epochs, iterations_per_epoch = 6, TRAIN_PARAMS["samples_per_epoch"] // TRAIN_PARAMS["batch_size"]
    try:
        reader.start()
        start_training(server, max_epochs=epochs)

        # 1. wait for a checkpoint of epoch >= 2, then kill the trainer about a second into the next epoch
        deadline, seen = time.monotonic() + TASK_TIMEOUT_S, None
        while True:
            assert time.monotonic() < deadline, f"no checkpoint of epoch 2 within {TASK_TIMEOUT_S} s:\n{server.log()}"
            assert train_status(server).get("status") in ("SUBMITTED", "RUNNING"), server.log()
            stamp = last.stat().st_mtime_ns if last.is_file() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                if _epochs(last) >= 2:
                    break
            time.sleep(0.1)
        time.sleep(1.0)
        trainer = train_process(server)
        assert trainer is not None, f"no training subprocess under the server:\n{server.log()}"
        for process in [*trainer.children(recursive=True), trainer]:
            process.kill()
        trainer.wait(timeout=30)
        task = wait_for_training(server)
        assert task["status"] == "ERROR", f"the killed run ended {task['status']} (finished before the kill?)"

        saved_epochs = _epochs(last)  # loads: the kill left last.pt whole
        assert 2 <= saved_epochs < epochs
        assert _optimizer_steps(last) == saved_epochs * iterations_per_epoch
        load_checkpoint(best)

        # 2. the same request again continues the interrupted run: its epoch, schedule and optimizer state
        log_before = server.log_path.stat().st_size
        start_training(server, max_epochs=epochs)
        task = wait_for_training(server)
        assert task["status"] == "DONE", f"resumed training ended {task['status']}: {task.get('details')}"
        run_log = server.log_path.read_bytes()[log_before:].decode(errors="replace")
        assert f"training starts from {last}" in run_log, run_log[-4000:]
        assert f"resuming the interrupted run at epoch {saved_epochs}/{epochs}" in run_log, run_log[-4000:]
        metadata = read_checkpoint(last)["metadata"]
        assert metadata["epochs_trained"] == epochs, (saved_epochs, metadata)
        assert metadata["run"]["started_from"] == str(last)
        # Adam's step count goes on from the saved one (a fresh optimizer would count only this run's steps)
        assert _optimizer_steps(last) == epochs * iterations_per_epoch
    finally:
        reader.stop.set()
        reader.join(timeout=60)
        stop_server(server)

    # 3. the loop never failed to load, and it saw the files change under it
    assert reader.errors == [], reader.errors[:5]
    assert len(reader.versions["last.pt"]) >= 3 and len(reader.versions["best.pt"]) >= 1, reader.versions
    with capsys.disabled():
        print(f"\n[crash] trainer killed after epoch {saved_epochs}; resumed run saved epoch {epochs}; "
              f"{reader.loads} checkpoint loads during training, no error")  # fmt: skip


# ---------------------------------------------------------------------------------------------- labels
def _big_label(image: nib.Nifti1Image, seed: int) -> bytes:
    """A valid (0/1, image geometry) label stored without compression inside the gzip: ~2.7 MB to write."""
    data = (np.random.default_rng(seed).random(image.shape) < 0.5).astype(np.uint8)
    label = nib.Nifti1Image(data, image.affine)
    label.set_qform(image.affine, code=1)
    label.set_sform(image.affine, code=1)
    label.header.set_data_dtype(np.uint8)
    return gzip.compress(label.to_bytes(), compresslevel=0)


def _put_label(server: MonaiLabelServer, data: bytes, timeout: float = 120) -> requests.Response:
    return requests.put(
        f"{server.url}/datastore/label",
        params={"image": LABELLED, "tag": "final"},
        files={"label": (f"{LABELLED}.nii.gz", data, "application/gzip")},
        timeout=timeout,
    )


class _FolderWatch:
    """Kills the server as soon as anything in ``folder`` is created, resized or touched."""

    def __init__(self, folder: Path, server: MonaiLabelServer) -> None:
        self.folder, self.server = folder, server
        self.before = self._state()
        self.fired = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _state(self) -> dict:
        return {e.name: (e.stat().st_size, e.stat().st_mtime_ns, e.inode()) for e in os.scandir(self.folder)}

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                changed = self._state() != self.before
            except FileNotFoundError:  # a temporary file went away between scandir and stat
                changed = True
            if changed:
                kill_server(self.server)
                self.fired.set()
                return
            time.sleep(0.0005)


def _check_datastore(server: MonaiLabelServer, image_ids: set[str], versions: dict[str, bytes], expected: set[str]) -> str:
    """The restarted server's datastore: the label is one of ``expected`` (names in ``versions``) byte for byte,
    loads, is served, and no stray file shows up as an image or a label. Returns the name of the label kept."""
    label_file = server.datastore / "labels" / "final" / f"{LABELLED}.nii.gz"
    stored = label_file.read_bytes()
    kept = next((name for name, data in versions.items() if data == stored), f"none of them ({len(stored)} bytes)")
    assert kept in expected, f"the label is {kept}, expected one of {sorted(expected)}"
    label = nib.load(str(label_file))
    values = np.asarray(label.dataobj)  # reads every byte: a truncated gzip fails here
    assert values.shape == nib.load(str(server.datastore / f"{LABELLED}.nii.gz")).shape
    assert set(np.unique(values)) <= {0, 1}

    served = requests.get(f"{server.url}/datastore/label", params={"label": LABELLED, "tag": "final"}, timeout=60)
    assert served.status_code == 200 and served.content == stored
    objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
    assert set(objects) == image_ids, f"images now: {sorted(objects)}"
    labels = {image_id: set(obj.get("labels", {})) for image_id, obj in objects.items()}
    assert labels == {i: ({"final"} if i == LABELLED else set()) for i in image_ids}, labels
    json.loads((server.datastore / "datastore_v2.json").read_text())  # whole
    visible = {p.name for p in (server.datastore / "labels" / "final").iterdir() if not p.name.startswith(".")}
    assert visible == {f"{LABELLED}.nii.gz"}, visible
    return kept


def test_server_killed_during_save_label_keeps_the_old_or_the_new_label(tmp_path, capsys):
    datastore = make_datastore(tmp_path)
    image = nib.load(str(datastore / f"{LABELLED}.nii.gz"))
    versions = {
        "sample": (datastore / "labels" / "final" / f"{LABELLED}.nii.gz").read_bytes(),
        "big_a": _big_label(image, seed=0),
        "big_b": _big_label(image, seed=1),
    }
    server = start_server(tmp_path, datastore)
    image_ids = set(requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"])
    outcomes: list[str] = []
    try:
        # how long an uninterrupted save takes (and that the big label is valid): the kill delays scale with it
        t0 = time.perf_counter()
        answer = _put_label(server, versions["big_a"])
        duration = time.perf_counter() - t0
        assert answer.status_code == 200, answer.text
        current = _check_datastore(server, image_ids, versions, {"big_a"})

        # each round replaces one big label with the other; None: kill on the first write into labels/final
        for delay in [0.25 * duration, 0.5 * duration, 0.75 * duration, duration, 1.5 * duration, None]:
            sending = "big_b" if current == "big_a" else "big_a"
            started = threading.Event()

            def put(data=versions[sending], server=server, started=started):
                started.set()
                try:
                    _put_label(server, data)
                except requests.RequestException:
                    pass  # the server dies under the request

            watch = _FolderWatch(datastore / "labels" / "final", server) if delay is None else None
            sender = threading.Thread(target=put, daemon=True)
            sender.start()
            started.wait(10)
            if watch is None:
                time.sleep(delay)
                kill_server(server)
            else:
                assert watch.fired.wait(60), "the server never wrote into labels/final"
                watch.stop.set()
            sender.join(timeout=120)
            server = start_server(tmp_path, datastore)
            previous, current = current, _check_datastore(server, image_ids, versions, {current, sending})
            moment = "first write" if delay is None else f"{delay:.2f} s"
            outcomes.append(f"{moment}: {'new' if current != previous else 'old'}")
    finally:
        stop_server(server)
    leftovers = len(list(datastore.rglob(".*.part")))
    with capsys.disabled():
        print(f"\n[crash] save_label of a {len(versions['big_a']) / 1e6:.1f} MB label takes {duration:.2f} s; "
              f"killed at {', '.join(outcomes)}; hidden temporary files left: {leftovers}")  # fmt: skip
