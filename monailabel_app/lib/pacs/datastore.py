"""MONAI Label's DICOMweb datastore on a PACS (Orthanc), with the local datastore's checks and clear errors.

:class:`SafeDICOMwebDatastore` is MONAI Label's ``DICOMWebDatastore`` (series are found with QIDO-RS, downloaded
with WADO-RS into a local cache and converted to NIfTI with SimpleITK; final labels go back with STOW-RS as
DICOM SEG) on top of :class:`~lib.safe_datastore.SafeLocalDatastore` for that cache, so that:

* a final label is validated against its series before anything is written (ids, values, geometry → 4xx),
  then written as a DICOM SEG with ``pydicom-seg`` (segment labels from the app's label names, referencing the
  source series) — the stock path calls dcmqi's ``itkimage2segimage`` and would download it at start-up;
* a downloaded series is converted only when its slices form one regular volume (one orientation, even
  spacing: :func:`~.series.check_slice_stack`), else 422 naming it; such a series is never the next sample
  (checked on its WADO-RS metadata, without pixel data);
* every cached file (the converted series, labels, uncertainty maps) is written atomically and validated as
  in the local datastore (a series with NaN voxels or over the voxel limit is refused);
* images come from the PACS: ``PUT /datastore/image`` and deleting an image or a final label answer 405
  saying to do it in the PACS;
* the PACS down or not answering → 503 naming it (``PacsUnavailableError``); ``/info`` still answers and
  says so under ``datastore.pacs``;
* a SEG saved moments ago is seen at once: the listing is asked from the PACS on every call (no 2-hour TTL
  cache), only the immutable SEG → source-series links are remembered.

Orthanc stores one DICOM instance per STOW-RS request atomically (its index is a SQLite transaction), and a
label is one SEG instance: the PACS holds the whole label or nothing.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import pydicom
import requests
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.convert import binary_to_image, dicom_to_nifti, nifti_to_dicom_seg
from monailabel.datastore.utils.dicom import dicom_web_download_series, dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from ..safe_datastore import SafeLocalDatastore, _http_errors
from ..validation import NotFoundError, ValidationError, validate_id, validate_label_file, validate_tag
from .series import check_slice_stack

__all__ = ["PacsUnavailableError", "PacsSession", "SafeDICOMwebDatastore", "make_client"]

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 120.0
"""Longest wait for one answer of the PACS (a whole series download is many answers)."""
RETRY_ATTEMPTS = 2
RETRY_WAIT_MS = 250
"""A request the PACS refuses (unreachable, 429 / 408 / 502–504) is tried ``RETRY_ATTEMPTS`` times in all, the retry
after 2 x ``RETRY_WAIT_MS`` ms: one transient blip is ridden out, and a PACS that is down gives the annotator
its 503 in about a second. (dicomweb-client's default, 5 attempts with 2 + 4 + 8 + 16 s back-off, made every call
on a stopped PACS wait 30 s before answering.)"""


class PacsUnavailableError(HTTPException):
    """The PACS cannot be reached or answers 502/503/504: HTTP 503 with a message naming it."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=503, detail=detail)

    def __str__(self) -> str:
        return self.detail


class PacsSession(requests.Session):
    """``requests.Session`` for the DICOMweb client: a timeout on every request, and an unreachable PACS raised
    as :class:`PacsUnavailableError` naming the server (:meth:`identify` asks Orthanc who it is)."""

    def __init__(self, base_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        super().__init__()
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.server_name = "PACS"

    def identify(self) -> None:
        """Name the server ``Orthanc <version> '<name>'`` when it is an Orthanc (its REST ``/system``, next to
        ``/dicom-web``); any other PACS, or none answering, stays ``PACS``."""
        root = self.base_url.rstrip("/").rsplit("/", 1)[0]
        try:
            system = requests.get(f"{root}/system", timeout=5).json()
            if isinstance(system, dict) and "Version" in system and "DicomAet" in system:
                self.server_name = f"Orthanc {system['Version']} {system.get('Name', '')!r}"
        except (requests.RequestException, ValueError):
            pass

    def describe(self) -> str:
        return f"{self.server_name} (DICOMweb at {self.base_url})"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            response = super().request(method, url, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise PacsUnavailableError(
                f"the PACS {self.describe()} is not reachable ({type(e).__name__}); nothing was read or written "
                "there; retry when it is back"
            ) from e
        if response.status_code in (502, 503, 504):
            raise PacsUnavailableError(
                f"the PACS {self.describe()} answered {response.status_code} to {method} {url}; retry later"
            )
        return response


def make_client(url: str) -> DICOMwebClientX:
    """MONAI Label's DICOMweb client on ``url`` with a :class:`PacsSession` (Orthanc: ``http://host:port/dicom-web``),
    retrying a refused request once (:data:`RETRY_ATTEMPTS`)."""
    session = PacsSession(url)
    session.identify()
    client = DICOMwebClientX(url=url, session=session)
    client.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


class SafeDICOMwebDatastore(DICOMWebDatastore, SafeLocalDatastore):
    """DICOMweb datastore whose local cache is a :class:`SafeLocalDatastore`.

    Args:
        client: the DICOMweb client (:func:`make_client`).
        search_filter: QIDO-RS filter of the image series (e.g. ``{"Modality": "MR"}``).
        cache_path: cache folder (MONAI Label's default: ``~/.cache/monailabel/dicom``).
        label_names: ``{name: value}`` of the segmentation labels: values a label may hold, and the DICOM SEG
            segment labels.
        map_tags: tags holding continuous maps (cached locally, never sent to the PACS).
    """

    def __init__(
        self,
        client: DICOMwebClientX,
        search_filter: Mapping[str, Any],
        cache_path: str | None,
        label_names: Mapping[str, int],
        map_tags: tuple[str, ...] = ("uncertainty",),
    ) -> None:
        self._seg_sources: dict[str, str | None] = {}  # SEG series → referenced image series (immutable)
        self._studies: dict[str, str] = {}  # image series → its study
        self._volume_problems: dict[str, str | None] = {}
        super().__init__(client=client, search_filter=dict(search_filter), cache_path=cache_path)
        self.label_names = {str(k): int(v) for k, v in label_names.items()}
        self.label_values = frozenset({0, *self.label_names.values()})
        self.map_tags = frozenset(map_tags)

    # ------------------------------------------------------------------ listing (always asked from the PACS)
    def list_images(self) -> list[str]:
        series = []
        for found in self._client.search_for_series(search_filters=self._search_filter):
            ds = Dataset.from_json(found)
            series.append(str(ds.SeriesInstanceUID))
            self._studies[series[-1]] = str(ds.StudyInstanceUID)
        return series

    def volume_problem(self, series_uid: str) -> str | None:
        """Why the series is not one regular volume (:func:`check_slice_stack` on its WADO-RS metadata, no pixel
        data), or None; remembered per series."""
        if series_uid not in self._volume_problems:
            if series_uid not in self._studies:
                self.list_images()
            meta = self._client.retrieve_series_metadata(self._studies[series_uid], series_uid)
            try:
                check_slice_stack([Dataset.from_json(m) for m in meta], name=f"series {series_uid!r}")
                self._volume_problems[series_uid] = None
            except ValueError as e:
                self._volume_problems[series_uid] = str(e)
        return self._volume_problems[series_uid]

    def _seg_source_map(self) -> dict[str, str | None]:
        """``{SEG series uid: referenced image series uid}`` of every SEG in the PACS."""
        found = {}
        for ds in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(ds)
            uid = str(seg["SeriesInstanceUID"].value)
            if uid not in self._seg_sources:
                meta = Dataset.from_json(self._client.retrieve_series_metadata(str(seg.StudyInstanceUID), uid)[0])
                refs = meta.get("ReferencedSeriesSequence")
                self._seg_sources[uid] = str(refs[0].SeriesInstanceUID) if refs else None
            found[uid] = self._seg_sources[uid]
        return found

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        images = set(self.list_images())
        return sorted({src for src in self._seg_source_map().values() if src in images})

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Series without a SEG that form a volume (the others cannot be segmented: never offered)."""
        labelled = set(self.get_labeled_images())
        return [s for s in self.list_images() if s not in labelled and self.volume_problem(s) is None]

    def status(self) -> dict[str, Any]:
        """Counts from the PACS; while it is down, what the cache holds and ``pacs`` saying why."""
        try:
            return {**super().status(), "pacs": f"{self._session_name()}: available"}
        except PacsUnavailableError as e:
            cached = SafeLocalDatastore.list_images(self)
            return {"total": len(cached), "completed": None, "label_tags": {}, "pacs": e.detail}

    def _session_name(self) -> str:
        session = getattr(self._client, "_session", None)
        return session.describe() if isinstance(session, PacsSession) else self._client.base_url

    # ------------------------------------------------------------------ images (downloaded into the cache)
    def get_image_uri(self, image_id: str) -> str:
        """The series as NIfTI in the cache: downloaded into a hidden folder renamed into place when complete (an
        interrupted download is never taken for the series), converted with SimpleITK, stored through
        :meth:`SafeLocalDatastore.add_image` (validated, atomic)."""
        images = self._datastore.image_path()
        cached = os.path.realpath(os.path.join(images, f"{image_id}.nii.gz"))
        if image_id in self._datastore.objects and os.path.isfile(cached):
            return cached
        validate_id(image_id)
        series_dir = os.path.join(images, image_id)
        if not os.path.isdir(series_dir):
            part = tempfile.mkdtemp(prefix=f".{image_id}.", suffix=".part", dir=images)
            try:
                dicom_web_download_series(None, image_id, part, self._client, self._fetch_by_frame)
                try:
                    os.replace(part, series_dir)
                except OSError:
                    if not os.path.isdir(series_dir):  # else another request downloaded it meanwhile
                        raise
            finally:
                shutil.rmtree(part, ignore_errors=True)  # gone after the rename; left over when it failed
        with _http_errors():
            _check_volume(series_dir, image_id)
        converted = dicom_to_nifti(series_dir)
        try:
            SafeLocalDatastore.add_image(self, image_id, converted, self._dicom_info(image_id))
        finally:
            os.unlink(converted)
        return cached

    # ------------------------------------------------------------------ checks
    def _require_image(self, image_id: str) -> None:
        validate_id(image_id)
        if image_id not in self.list_images():
            raise NotFoundError(f"series {image_id!r} is not in the PACS {self._session_name()} (filter {self._search_filter})")

    def _refuse(self, what: str) -> None:
        raise HTTPException(status_code=405, detail=f"{what} is done in the PACS {self._session_name()}, not here")

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        self._refuse("adding an image (store the DICOM series with STOW-RS or the PACS's upload)")
        return image_id

    def remove_image(self, image_id: str) -> None:
        self._refuse("deleting an image series")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == DefaultLabelTag.FINAL:
            self._refuse("deleting a final label (a DICOM SEG series)")
        SafeLocalDatastore.remove_label(self, label_id, label_tag)

    # ------------------------------------------------------------------ labels
    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """Validate; a final label then goes to the PACS as DICOM SEG first, the cache second."""
        converted = ""
        try:
            with _http_errors():
                validate_tag(label_tag)
                self._require_image(image_id)
                image_path = self.get_image_uri(image_id)
                if "".join(pathlib.Path(label_filename).suffixes) == ".bin":
                    converted = label_filename = binary_to_image(image_path, label_filename)
                label_info = dict(label_info or {})
                if label_tag == DefaultLabelTag.FINAL:
                    label_info.update(self._store_seg(image_id, image_path, label_filename))
            return SafeLocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        finally:
            if converted:
                os.unlink(converted)

    def _store_seg(self, image_id: str, image_path: str, label_filename: str) -> dict[str, Any]:
        """Check the label against the series, write it as one DICOM SEG instance, STOW it; returns its ids."""
        info = validate_label_file(label_filename, image_path, self.label_values, name=f"final label of {image_id!r}")
        present = sorted(v for v in info.values if v != 0)
        if not present:
            raise ValidationError("the label is empty: a DICOM SEG needs at least one segment; nothing was stored")
        names = {v: n for n, v in self.label_names.items()}
        segments = [{"name": names.get(v, f"label_{v}"), "description": names.get(v, f"label {v}")} for v in present]
        series_dir = os.path.join(self._datastore.image_path(), image_id)
        seg_file = nifti_to_dicom_seg(series_dir, label_filename, segments, use_itk=False)
        try:
            seg_series = dicom_web_upload_dcm(seg_file, self._client)
        finally:
            os.unlink(seg_file)
        if not seg_series:
            raise PacsUnavailableError(f"the PACS {self._session_name()} did not confirm storing the DICOM SEG")
        self._seg_sources[seg_series] = image_id
        logger.info("final label of %s stored in the PACS as DICOM SEG series %s (segments %s)", image_id, seg_series, segments)
        image_info = self.get_image_info(image_id)
        return {
            "SeriesInstanceUID": seg_series,
            "Modality": "SEG",
            "PatientID": image_info.get("PatientID"),
            "StudyInstanceUID": image_info.get("StudyInstanceUID"),
            "segments": {s["name"]: v for s, v in zip(segments, present)},
        }


def _check_volume(series_dir: str, image_id: str) -> None:
    """:func:`check_slice_stack` on the downloaded instances' headers → 422 naming the series."""
    datasets = [pydicom.dcmread(os.path.join(series_dir, f), stop_before_pixels=True) for f in sorted(os.listdir(series_dir))]
    try:
        check_slice_stack(datasets, name=f"series {image_id!r}")
    except ValueError as e:
        raise ValidationError(str(e)) from e


DEFAULT_SEARCH_FILTER = {"Modality": "MR"}
"""Image series the app lists unless told otherwise (MONAI Label's default filter is ``{"Modality": "CT"}``)."""

_MONAILABEL_DEFAULT_FILTER = {"Modality": "CT"}


def search_filter() -> dict[str, Any]:
    """``MEDSEGDIFF_PACS_SEARCH_FILTER`` (JSON), else ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` when it is not MONAI
    Label's CT default (``monailabel start_server`` exports every setting, so being set says nothing), else
    :data:`DEFAULT_SEARCH_FILTER`."""
    from monailabel.config import settings

    if os.environ.get("MEDSEGDIFF_PACS_SEARCH_FILTER"):
        value = json.loads(os.environ["MEDSEGDIFF_PACS_SEARCH_FILTER"])
        if not isinstance(value, dict):
            raise ValueError(f"MEDSEGDIFF_PACS_SEARCH_FILTER must be a JSON object, got {value!r}")
        return value
    if settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER != _MONAILABEL_DEFAULT_FILTER:
        return dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    return dict(DEFAULT_SEARCH_FILTER)


def pacs_datastore(url: str, label_names: Mapping[str, int], map_tags: tuple[str, ...]) -> SafeDICOMwebDatastore:
    """The app's datastore for ``--studies http(s)://<pacs>/dicom-web``, from the environment and MONAI Label's
    settings: :func:`search_filter` selects the image series; ``MONAI_LABEL_DATASTORE_CACHE_PATH`` (or
    ``MONAI_LABEL_DICOMWEB_CACHE_PATH``) is the local cache folder."""
    from monailabel.config import settings

    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return SafeDICOMwebDatastore(make_client(url.rstrip("/")), search_filter(), cache or None, label_names, map_tags)
