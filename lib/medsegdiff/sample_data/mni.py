"""nilearn's ICBM152 2009a template: T1 with tissue labels (GM/WM/CSF) and a brain mask (not FSL's MNI152)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .scan import Scan, _load_canonical, _package_dir, _require_files

_MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
_MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
_NILEARN_HINT = "install it with `pip install nilearn`"


def _mni152_files() -> list[Path]:
    data = _package_dir("nilearn", _NILEARN_HINT) / "datasets" / "data"
    return _require_files([data / _MNI_T1, data / _MNI_GM, data / _MNI_WM], _NILEARN_HINT)


def _mni152_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI ICBM152 2009a T1, brain mask and GM / WM probabilities (0..1), all RAS."""
    t1_path, gm_path, wm_path = _mni152_files()
    t1, affine = _load_canonical(t1_path)
    gm, _ = _load_canonical(gm_path)
    wm, _ = _load_canonical(wm_path)
    t1 = t1.astype(np.float32)
    gm = gm.astype(np.float32) / 255.0
    wm = wm.astype(np.float32) / 255.0
    return t1, template_brain(t1, gm, wm), np.stack([gm, wm]), affine


def template_brain(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """A skull-stripped template's brain mask (data.md recipe): fill_holes(T1 / max > 0.2 or GM + WM > 0.5)."""
    return ndi.binary_fill_holes((t1 / max(float(t1.max()), 1e-6) > 0.2) | (gm + wm > 0.5))


def tissue_labels(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """CSF (1) / GM (2) / WM (3) labels: the argmax of (background, CSF, GM, WM) with background = 1 - brain,
    CSF = brain - GM - WM (clipped at 0) and GM, WM the probability maps (0..1) inside the brain."""
    inside = brain.astype(np.float32)
    gm, wm = gm * inside, wm * inside
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    return np.stack([1.0 - inside, csf, gm, wm]).argmax(axis=0).astype(np.uint8)


def load_mni152_tissue() -> Scan:
    """MNI ICBM152 2009a T1 (skull removed, 1 mm) with CSF / GM / WM labels from nilearn's maps.

    Labels are the argmax of (background, CSF, GM, WM) where background = 1 - brain,
    CSF = brain - GM - WM (clipped at 0) and GM, WM are the probability maps inside the brain.

    Returns:
        Scan ``mni152_tissue`` of shape (197, 233, 189), labels ``{"csf": 1, "gm": 2, "wm": 3}``.

    Raises:
        FileNotFoundError: nilearn is not installed.
    """
    t1, brain, gm_wm, affine = _mni152_arrays()
    label = tissue_labels(brain, gm_wm[0], gm_wm[1])
    return Scan(
        name="mni152_tissue",
        image=t1,
        label=label,
        affine=affine,
        label_names={"csf": 1, "gm": 2, "wm": 3},
        source="nilearn",
    )


def load_mni152_brain() -> Scan:
    """MNI ICBM152 2009a T1 with the brain mask of the data.md recipe.

    Returns:
        Scan ``mni152_brain`` of shape (197, 233, 189), label ``{"brain": 1}``.

    Raises:
        FileNotFoundError: nilearn is not installed.
    """
    t1, brain, _, affine = _mni152_arrays()
    return Scan(
        name="mni152_brain",
        image=t1,
        label=brain.astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="nilearn",
    )


