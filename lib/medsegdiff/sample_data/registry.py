"""Every loader by name, and which of them have their files installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .cat12 import _cat12_files, load_cat12_tissue
from .dicom import _dicom_lesion_files, load_dicom_mr_lesion
from .heads import _colin27_files, _robex_files, load_colin27, load_robex_head
from .microscopy import _stardist_files, load_stardist_nuclei_2d
from .mni import _mni152_files, load_mni152_brain, load_mni152_tissue
from .scan import Scan

LOADERS: dict[str, Callable[[], Scan]] = {
    "load_robex_head": load_robex_head,
    "load_colin27": load_colin27,
    "load_mni152_tissue": load_mni152_tissue,
    "load_mni152_brain": load_mni152_brain,
    "load_cat12_tissue": load_cat12_tissue,
    "load_stardist_nuclei_2d": load_stardist_nuclei_2d,
    "load_dicom_mr_lesion": load_dicom_mr_lesion,
}
"""Loader name to loader function, in the order of :func:`available_scans`."""

_FILE_CHECKS: dict[str, Callable[[], list[Path]]] = {
    "load_robex_head": _robex_files,
    "load_colin27": _colin27_files,
    "load_mni152_tissue": _mni152_files,
    "load_mni152_brain": _mni152_files,
    "load_cat12_tissue": _cat12_files,
    "load_stardist_nuclei_2d": _stardist_files,
    "load_dicom_mr_lesion": _dicom_lesion_files,
}


def _files_present(check: Callable[[], list[Path]]) -> bool:
    try:
        check()
    except FileNotFoundError:
        return False
    return True


def available_scans() -> list[str]:
    """Names of the loaders (keys of :data:`LOADERS`) whose files are installed.

    Only checks that files exist; nothing is read.
    """
    return [name for name, check in _FILE_CHECKS.items() if _files_present(check)]


# --------------------------------------------------------------------------------------------
