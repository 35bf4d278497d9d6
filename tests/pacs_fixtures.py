"""Fixtures for the PACS path: a private Orthanc (DICOMweb) filled with real DICOM series, and the app on it.

``orthanc`` (session scope) yields a :class:`PacsSetup`: the running ``OrthancServer`` (``url``,
``dicomweb_url``, ports, ``root``), the sample datastore its heads were converted from, and the SeriesInstanceUIDs
of what was uploaded (``series["robex_head_lowres"]``, ``series["robex_head_flipped"]`` — sample heads written
as MR series by ``lib.pacs.series`` — and two real series of pydicom's test files: ``series["pydicom_ct5n"]``,
a CT volume, and ``series["pydicom_mr700"]``, radial MR slices that do not form a volume). Orthanc listens
on free loopback ports with its storage in a temporary folder, and is stopped at the end. ``pacs_server`` (session scope) is the MedSegDiff MONAI Label server started with
``--studies <orthanc>/dicom-web`` (its DICOMweb cache in a temporary folder).

Import both into a test module (``from pacs_fixtures import orthanc, pacs_server``). Without Orthanc installed
(``apt-get install orthanc orthanc-dicomweb``, which ``scripts/setup.sh`` does as root) they skip, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MonaiLabelServer, make_datastore, start_server, stop_server

from monailabel_app.lib.pacs.orthanc import (
    PYDICOM_RADIAL_MR,
    PYDICOM_VOLUME,
    OrthancServer,
    find_orthanc,
    start_orthanc,
    stop_orthanc,
    upload_pydicom_series,
    upload_sample_heads,
)

UPLOADED_HEADS = ("robex_head_lowres", "robex_head_flipped")
"""Sample heads uploaded as MR series (the 3 mm one keeps inference cheap; the LAS copy tests orientation)."""


@dataclass
class PacsSetup:
    server: OrthancServer
    sample_datastore: Path
    series: dict[str, str]

    def restart(self) -> None:
        """Start Orthanc again on the same storage and ports (after ``stop``)."""
        self.server = start_orthanc(self.server.root, self.server.http_port, self.server.dicom_port)

    def stop(self) -> None:
        stop_orthanc(self.server)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    try:
        find_orthanc()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("pacs")
    samples = make_datastore(root / "samples")
    setup = PacsSetup(start_orthanc(root / "orthanc"), samples, {})
    try:
        setup.series.update(upload_sample_heads(setup.server.url, samples, UPLOADED_HEADS))
        setup.series["pydicom_ct5n"] = upload_pydicom_series(setup.server.url, PYDICOM_VOLUME)
        setup.series["pydicom_mr700"] = upload_pydicom_series(setup.server.url, PYDICOM_RADIAL_MR)
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def pacs_server(orthanc: PacsSetup, tmp_path_factory: pytest.TempPathFactory) -> MonaiLabelServer:
    root = tmp_path_factory.mktemp("monailabel_pacs")
    server = start_server(
        root, orthanc.server.dicomweb_url, env={"MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "dicomweb_cache")}
    )
    try:
        yield server
    finally:
        stop_server(server)
