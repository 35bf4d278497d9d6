"""MONAI Label's local datastore, with every write checked first and done atomically.

:class:`SafeLocalDatastore` is a drop-in ``LocalDatastore`` for ``MONAILabelApp.init_datastore``. What the
REST API writes (``PUT /datastore/image``, ``PUT /datastore/label``, ``DELETE``, ``PUT .../info``) and what
inference saves goes through it:

* ids and tags are checked (no ``../``, separators, NUL, absolute paths) → HTTP 400;
* unknown image / label ids → 404 (the stock datastore answers 500 or silently does nothing);
* the file is validated (:mod:`validation`: format, size, 4D/2D, affine, truncation, NaN, label values and
  label-vs-image geometry) → 413 / 422 naming the problem;
* re-uploading an image id that already has labels with a different image → 409 (the labels would no
  longer match); the same voxels again are accepted without a write;
* image info (``GET /datastore/image/info``, merged into ``/activelearning`` answers) has no server ``path``;
* NRRD uploads are stored as NIfTI (``.nii.gz``): the app reads images with nibabel;
* files and ``datastore_v2.json`` are written to a hidden temporary name in the same folder, then
  ``os.replace``-d: a crash leaves the old or the new file, never a broken one; the hidden ``.part`` file a
  crash leaves behind is removed the next time the datastore opens, once it is older than
  :data:`STALE_TEMP_AGE_S` (a younger one may belong to a write in progress in another process).

A refused request changes nothing on disk. Errors are raised as ``fastapi.HTTPException`` (FastAPI turns it
into the HTTP answer); the :class:`validation.ValidationError` is chained as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from filelock import FileLock

from medsegdiff.atomic import atomic_copy, atomic_write_bytes, remove_stale_temp_files
from medsegdiff.nifti import nifti_image
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from .validation import (
    AFFINE_TOLERANCE_MM,
    ConflictError,
    NotFoundError,
    ValidationError,
    VolumeInfo,
    label_value_set,
    to_http_exception,
    validate_id,
    validate_image_file,
    validate_label_file,
    validate_tag,
    volume_suffix,
)

__all__ = ["SafeLocalDatastore", "DEFAULT_MAP_TAGS", "STALE_TEMP_AGE_S"]

logger = logging.getLogger(__name__)

DEFAULT_MAP_TAGS = ("uncertainty", "probability")
"""Label tags that hold continuous maps (checked for geometry and finiteness, not for label values); a map may hold
one value per foreground class (a 4th axis)."""

STALE_TEMP_AGE_S = 3600.0
"""A temporary ``.part`` file this old (seconds since its last write) is a crash's leftover, never a live write."""


class SafeLocalDatastore(LocalDatastore):
    """``LocalDatastore`` that validates before it writes, writes atomically and answers 4xx for bad requests.

    Args:
        datastore_path: the datastore folder (as for ``LocalDatastore``).
        label_values: values a segmentation label may hold: ``{name: value}`` (MONAI Label's ``labels``,
            background 0 added) or an iterable of ints.
        map_tags: tags whose "labels" are continuous maps (e.g. ``uncertainty``, ``probability``).
        max_voxels: image voxel limit; default ``MEDSEGDIFF_MAX_VOXELS``.
        max_bytes: upload size limit; default ``MEDSEGDIFF_MAX_UPLOAD_MB``.
        affine_tolerance_mm: largest per-entry difference between a label's and its image's affine.
        **kwargs: passed to ``LocalDatastore`` (``extensions``, ``auto_reload``, ``read_only``, ...).
    """

    def __init__(
        self,
        datastore_path: str,
        label_values: Mapping[str, int] | Iterable[int] = (0, 1),
        map_tags: Iterable[str] = DEFAULT_MAP_TAGS,
        max_voxels: int | None = None,
        max_bytes: int | None = None,
        affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
        **kwargs: Any,
    ) -> None:
        self.label_values = label_value_set(label_values)
        self.map_tags = frozenset(map_tags)
        self.max_voxels = max_voxels
        self.max_bytes = max_bytes
        self.affine_tolerance_mm = affine_tolerance_mm
        remove_stale_temp_files(datastore_path, STALE_TEMP_AGE_S)
        super().__init__(datastore_path, **kwargs)
        handler = getattr(self, "_handler", None)  # present when auto_reload watches the folder
        if handler is not None:
            handler.on_moved = self._on_replaced

    def _on_replaced(self, event: Any) -> None:
        """Our writes are ``os.replace``-d, which watchdog reports as moves, not modifications: reload on them too.

        Without this, scores and labels written by another process (scoring and training run in subprocesses)
        would never reach the server's view of ``datastore_v2.json``.
        """
        if os.path.abspath(getattr(event, "dest_path", "")) == os.path.abspath(self._datastore_config_path):
            self._init_from_datastore_file()
        else:
            self._on_any_event(event)

    # ------------------------------------------------------------------ images
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Validate, then store ``image_filename`` as ``image_id`` (409 if that would orphan its labels)."""
        with _http_errors():
            if not image_id:
                image_id, _ = self._to_id(os.path.basename(image_filename))
            validate_id(image_id)
            info = validate_image_file(
                image_filename, max_voxels=self.max_voxels, max_bytes=self.max_bytes, name="uploaded image"
            )
            source, ext, cleanup = _nifti_source(image_filename, info)
            try:
                self._init_from_datastore_file()  # takes the lock itself: not inside ours
                with FileLock(self._lock_file):
                    existing = self._datastore.objects.get(image_id)
                    images = self._datastore.image_path()
                    if existing is not None:
                        old_path = os.path.join(images, self._filename(image_id, existing.image.ext))
                        if _same_volume(old_path, source):
                            logger.info("image %s: identical upload, nothing written", image_id)
                            return image_id
                        if existing.labels:
                            raise ConflictError(
                                f"image {image_id!r} already exists with labels ({', '.join(sorted(existing.labels))}) "
                                "and the upload is a different image; upload it under a new id, "
                                "or delete the old one first"
                            )
                    name = self._filename(image_id, ext)
                    atomic_copy(source, os.path.join(images, name))
                    if existing is not None and existing.image.ext != ext:  # replaced under another file ending
                        _remove_quietly(old_path)
                    image_info = dict(image_info or {})
                    image_info.update(ts=int(time.time()), name=name)
                    self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=image_info, ext=ext))
                    self._update_datastore_file(lock=False)
            finally:
                cleanup()
        logger.info("image %s stored (%s, %s)", image_id, "x".join(map(str, info.shape)), info.format)
        return image_id

    def remove_image(self, image_id: str) -> None:
        with _http_errors():
            self._require_image(image_id)
        super().remove_image(image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The stored info of an image, without ``LocalDatastore``'s absolute ``path`` (clients get ids, not paths)."""
        info = super().get_image_info(image_id)
        info.pop("path", None)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with _http_errors():
            self._require_image(image_id)
        super().update_image_info(image_id, info)

    # ------------------------------------------------------------------ labels
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Validate the label against its image, then store it atomically (an old label stays if refused)."""
        with _http_errors():
            validate_tag(label_tag)
            self._require_image(image_id)
            image_path = self.get_image_uri(image_id)
            is_map = label_tag in self.map_tags
            info = validate_label_file(
                label_filename,
                image_path,
                None if is_map else self.label_values,
                max_bytes=self.max_bytes,
                affine_tolerance_mm=self.affine_tolerance_mm,
                name=f"label {label_tag!r} of {image_id!r}",
                max_components=max(len(self.label_values) - 1, 1) if is_map else 1,  # a map: one value per class
            )
            source, ext, cleanup = _nifti_source(label_filename, info)
            try:
                self._init_from_datastore_file()  # takes the lock itself: not inside ours
                with FileLock(self._lock_file):
                    obj = self._datastore.objects.get(image_id)
                    if obj is None:  # removed while we validated
                        raise NotFoundError(f"image {image_id!r} is not in the datastore")
                    folder = self._datastore.label_path(label_tag)
                    name = self._filename(image_id, ext)
                    atomic_copy(source, os.path.join(folder, name))
                    old = obj.labels.get(label_tag)
                    if old is not None and old.ext != ext:
                        _remove_quietly(os.path.join(folder, self._filename(image_id, old.ext)))
                    label_info = dict(label_info or {})
                    label_info.update(ts=int(time.time()), name=name)
                    obj.labels[label_tag] = DataModel(info=label_info, ext=ext)
                    self._update_datastore_file(lock=False)
            finally:
                cleanup()
        logger.info("label %s/%s stored (values %s)", label_tag, image_id, list(info.values) or "map")
        return image_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with _http_errors():
            self._require_label(label_id, label_tag)
        super().remove_label(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with _http_errors():
            self._require_label(label_id, label_tag)
        super().update_label_info(label_id, label_tag, info)

    # ------------------------------------------------------------------ helpers
    def _require_image(self, image_id: str) -> None:
        validate_id(image_id)
        if image_id not in self._datastore.objects:
            raise NotFoundError(f"image {image_id!r} is not in the datastore")

    def _require_label(self, label_id: str, label_tag: str) -> None:
        validate_tag(label_tag)
        self._require_image(label_id)
        if self._datastore.label(label_id, label_tag) is None:
            raise NotFoundError(f"image {label_id!r} has no label with tag {label_tag!r}")

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write ``datastore_v2.json`` atomically (the stock one truncates it first: a crash leaves it empty)."""

        def write() -> None:
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_bytes(self._datastore_config_path, text.encode())
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


# ---------------------------------------------------------------------------------------------- files
class _http_errors:
    """Context manager: a ``ValidationError`` leaves as the ``HTTPException`` with its status and message."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, ValidationError):
            raise to_http_exception(exc) from exc
        return False


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _nifti_source(path: str, info: VolumeInfo):
    """``(file to store, its datastore ending, cleanup)``: NIfTI as is, NRRD converted to a temporary .nii.gz."""
    suffix = volume_suffix(path)
    if info.format == "NIfTI":
        return path, suffix, lambda: None
    import nibabel as nib
    import nrrd

    data, _ = nrrd.read(path, index_order="F")
    data = np.asarray(data).reshape(info.shape, order="F")
    img = nifti_image(data, info.affine)
    fd, converted = tempfile.mkstemp(suffix=".nii.gz", prefix="medsegdiff_nrrd_")
    os.close(fd)
    nib.save(img, converted)
    return converted, ".nii.gz", lambda: _remove_quietly(converted)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _same_volume(stored: str, upload: str) -> bool:
    """Same bytes, or same grid and voxels (a re-export of the same volume)."""
    if not os.path.isfile(stored):
        return False
    if os.path.getsize(stored) == os.path.getsize(upload) and _sha256(stored) == _sha256(upload):
        return True
    import nibabel as nib

    try:
        a, b = nib.load(stored), nib.load(upload)
        if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
            return False
        return bool(np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)))
    except Exception:  # an unreadable stored file is not "the same"
        return False
