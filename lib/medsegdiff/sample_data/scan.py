"""The ``Scan`` record and the helpers every data source uses: package files, canonical loading, masks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

@dataclass
class Scan:
    """One real scan with its (optional) label, on the same voxel grid.

    Attributes:
        name: Short identifier, e.g. ``"robex_head"``.
        image: Intensities, float32, 3D ``(X, Y, Z)`` in RAS order or 2D ``(H, W)``.
        label: Integer label map (uint8) with the shape of ``image``, or None when unlabelled.
        affine: 4x4 voxel-to-world (RAS, mm) matrix; identity for microscopy.
        label_names: Label name to value, background (0) excluded.
        source: Package the files come from (for manifests and figure captions).
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    label_names: dict[str, int]
    source: str = ""

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (from the affine)."""
        return _voxel_sizes(self.affine)[: self.image.ndim]


# --------------------------------------------------------------------------------------------
# Locating package files
# --------------------------------------------------------------------------------------------
def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found through importlib without importing it.

    Raises:
        FileNotFoundError: The package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package '{module}' is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _require_files(paths: list[Path], install_hint: str) -> list[Path]:
    """Return ``paths`` when every one exists, else raise FileNotFoundError naming the package."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing {', '.join(missing)}: {install_hint}")
    return paths



def _voxel_sizes(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def _load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume, drop trailing singleton axes and reorient it to RAS.

    Returns:
        The data array (scaling applied, native dtype or float) and its RAS affine.
    """
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    return np.asanyarray(canonical.dataobj), canonical.affine.copy()


def _brain_mask_scan(name: str, image_path: Path, mask_path: Path, source: str) -> Scan:
    """A T1 head and its brain mask (> 0.5) on the same grid, both RAS: ``Scan`` ``name`` labelled ``{"brain": 1}``.

    Raises:
        ValueError: the mask is not on the image's grid.
    """
    image, affine = _load_canonical(image_path)
    mask, mask_affine = _load_canonical(mask_path)
    if mask.shape != image.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError(f"{mask_path} is not on the grid of {image_path}")
    return Scan(name=name, image=image.astype(np.float32), label=(mask > 0.5).astype(np.uint8), affine=affine,
                label_names={"brain": 1}, source=source)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _fill_holes(mask: np.ndarray, slice_axis: int | None = 2) -> np.ndarray:
    """Fill holes in 3D, then slice by slice along ``slice_axis`` (None skips the 2D pass)."""
    filled = ndi.binary_fill_holes(mask)
    if slice_axis is not None:
        moved = np.moveaxis(filled, slice_axis, 0)
        for i in range(moved.shape[0]):
            moved[i] = ndi.binary_fill_holes(moved[i])
    return filled


# --------------------------------------------------------------------------------------------
