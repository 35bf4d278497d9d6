"""A private Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) filled with the sample heads.

Used by the tests' ``orthanc`` fixture and by ``make serve-pacs``::

    python -m lib.pacs.orthanc start --root data/pacs --studies data/sample_datastore   # from monailabel_app/

:func:`start_orthanc` writes a JSON configuration (storage in ``root/storage``, HTTP and DICOM ports, the
DICOMweb plugin at ``/dicom-web/``, remote HTTP access off, C-STORE only from declared modalities — there are
none), starts ``Orthanc`` in its own process group and returns once ``/system`` and ``/dicom-web/studies``
answer. :func:`upload_sample_heads` converts the sample datastore's NIfTI heads into MR series
(:mod:`.series`, UIDs derived from the sample id, so uploading twice stores them once) and
:func:`upload_pydicom_series` adds real series shipped with pydicom (``pydicom-data`` holds no multi-slice
series with geometry).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import requests

from .series import SeriesInfo, volume_to_mr_series

__all__ = [
    "DICOMWEB_PLUGIN", "OrthancServer", "find_orthanc", "start_orthanc", "stop_orthanc",
    "store_instance", "upload_sample_heads", "upload_pydicom_series", "PYDICOM_VOLUME", "PYDICOM_RADIAL_MR",
]  # fmt: skip

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
"""Where Debian's ``orthanc-dicomweb`` puts the plugin (``ORTHANC_DICOMWEB_PLUGIN`` overrides)."""

_INSTALL_HINT = "install it with `apt-get install orthanc orthanc-dicomweb` (scripts/setup.sh does, as root)"

PYDICOM_VOLUME = "dicomdirtests/98892001/CT5N"
"""A real CT series of pydicom's test files that forms a volume: 5 axial 16 x 16 slices, 2.5 mm apart."""

PYDICOM_RADIAL_MR = "dicomdirtests/98892003/MR700"
"""A real MR series of pydicom's test files that is *not* a volume: 7 radial slices, each rotated."""


@dataclass
class OrthancServer:
    """A running Orthanc: ``url`` (REST), ``dicomweb_url`` (``url/dicom-web``), its ports and folders."""

    url: str
    http_port: int
    dicom_port: int
    root: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


def find_orthanc() -> tuple[str, str]:
    """``(Orthanc executable, DICOMweb plugin)``; raises ``FileNotFoundError`` with the install hint."""
    executable = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN", DICOMWEB_PLUGIN)
    if executable is None:
        raise FileNotFoundError(f"Orthanc is not installed: {_INSTALL_HINT}")
    if not os.path.isfile(plugin):
        raise FileNotFoundError(f"the Orthanc DICOMweb plugin {plugin} is missing: {_INSTALL_HINT}")
    return executable, plugin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, http_port: int, dicom_port: int, plugin: str) -> dict:
    storage = str(root / "storage")
    return {
        "Name": "MedSegDiffPACS",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "MEDSEGDIFF",
        "RemoteAccessAllowed": False,  # HTTP from loopback only
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,  # C-STORE only from declared modalities (none)
        "DicomAlwaysAllowEcho": True,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        "SaveJobs": False,
        "HttpThreadsCount": 8,
    }


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def start_orthanc(
    root: str | Path, http_port: int | None = None, dicom_port: int | None = None, timeout_s: float = 60
) -> OrthancServer:
    """Start Orthanc with storage in ``root/storage`` (kept: a restart on the same root sees the same studies).

    Raises:
        FileNotFoundError: Orthanc or its DICOMweb plugin is not installed.
        RuntimeError: it exited or did not answer within ``timeout_s`` (the message carries its log).
    """
    executable, plugin = find_orthanc()
    root = Path(root).resolve()
    (root / "storage").mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(_config(root, http_port, dicom_port, plugin), indent=2))
    with open(root / "orthanc.log", "ab") as log:
        process = subprocess.Popen(
            [executable, str(config)], cwd=str(root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = OrthancServer(f"http://127.0.0.1:{http_port}", http_port, dicom_port, root, process)
    deadline = time.monotonic() + timeout_s
    while not (_answers(f"{server.url}/system") and _answers(f"{server.dicomweb_url}/studies")):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_orthanc(server)
            raise RuntimeError(f"Orthanc did not come up on port {http_port}; log:\n{server.log()}")
        time.sleep(0.2)
    return server


def stop_orthanc(server: OrthancServer, timeout_s: float = 30) -> None:
    """SIGTERM Orthanc (it closes its index cleanly), SIGKILL when it does not end within ``timeout_s``."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=timeout_s)


def store_instance(url: str, ds: pydicom.Dataset) -> dict:
    """POST one instance to Orthanc's REST ``/instances``; returns Orthanc's answer (``Status``: ``Success`` or
    ``AlreadyStored``)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, write_like_original=False)
    response = requests.post(f"{url}/instances", data=buffer.getvalue(), timeout=60)
    response.raise_for_status()
    return response.json()


def upload_volume(url: str, data: np.ndarray, affine: np.ndarray, info: SeriesInfo) -> str:
    """Store ``data`` as an MR series in the Orthanc at ``url``; returns its SeriesInstanceUID."""
    for ds in volume_to_mr_series(data, affine, info):
        store_instance(url, ds)
    return info.series_instance_uid


def upload_sample_heads(url: str, datastore: str | Path, ids: Iterable[str] | None = None) -> dict[str, str]:
    """The sample datastore's images (``medsegdiff.sample_data``) as MR series; returns ``{sample id: series uid}``."""
    from medsegdiff.sample_data import read_manifest

    datastore = Path(datastore)
    manifest = read_manifest(datastore)
    if manifest is None:
        raise FileNotFoundError(f"{datastore} has no sample manifest: build it with `python -m medsegdiff.sample_data build`")
    uids = {}
    for number, sample_id in enumerate(ids or manifest["ids"], start=1):
        entry = manifest["items"][sample_id]
        img = nib.load(str(datastore / entry["image"]))
        info = SeriesInfo(
            patient_id=sample_id, series_description=entry["description"][:64], series_number=number,
            study_description=f"MedSegDiff sample ({entry['source']})", uid_seed=f"medsegdiff sample {sample_id}",
        )  # fmt: skip
        uids[sample_id] = upload_volume(url, np.asanyarray(img.dataobj), img.affine, info)
    return uids


def upload_pydicom_series(url: str, folder: str = PYDICOM_VOLUME) -> str:
    """Store a real DICOM series of pydicom's test files as it is; returns its SeriesInstanceUID."""
    files = sorted((Path(pydicom.data.__file__).parent / "test_files" / folder).iterdir())
    series = set()
    for path in files:
        ds = pydicom.dcmread(str(path))
        series.add(str(ds.SeriesInstanceUID))
        store_instance(url, ds)
    if len(series) != 1:
        raise ValueError(f"{folder} holds {len(series)} series, not one")
    return series.pop()


def main(argv: list[str] | None = None) -> int:
    """``start``: Orthanc on ``--root`` with the sample heads; prints its DICOMweb URL, leaves it running."""
    parser = argparse.ArgumentParser(prog="python -m lib.pacs.orthanc", description=main.__doc__)
    parser.add_argument("command", choices=["start"])
    parser.add_argument("--root", default="data/pacs", help="Orthanc's folder (storage, config, log, pid)")
    parser.add_argument("--studies", default="data/sample_datastore", help="the sample datastore to upload")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    args = parser.parse_args(argv)
    server = start_orthanc(args.root, args.http_port, args.dicom_port)
    (server.root / "orthanc.pid").write_text(str(server.process.pid))
    uids = upload_sample_heads(server.url, args.studies)
    uids["pydicom CT5N (CT: listed with MEDSEGDIFF_PACS_SEARCH_FILTER='{\"Modality\": \"CT\"}')"] = upload_pydicom_series(
        server.url
    )
    for name, uid in uids.items():
        print(f"[pacs] {name}: series {uid}", flush=True)
    print(server.dicomweb_url, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
