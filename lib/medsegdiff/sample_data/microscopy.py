"""The real 2D nuclei image with its instance mask that stardist ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .scan import Scan, _package_dir, _require_files

_STARDIST_HINT = "install it with `pip install --no-deps stardist==0.9.2`"


def _stardist_files() -> list[Path]:
    images = _package_dir("stardist", _STARDIST_HINT) / "data" / "images"
    return _require_files([images / "img2d.tif", images / "mask2d.tif"], _STARDIST_HINT)


def load_stardist_nuclei_2d() -> Scan:
    """Real fluorescence nuclei image (512 x 512) from stardist with its foreground mask.

    Returns:
        2D Scan ``stardist_nuclei_2d``, identity affine, label ``{"nucleus": 1}`` (instances > 0).

    Raises:
        FileNotFoundError: stardist is not installed.
    """
    import tifffile

    image_path, mask_path = _stardist_files()
    image = tifffile.imread(str(image_path)).astype(np.float32)
    mask = tifffile.imread(str(mask_path))
    return Scan(
        name="stardist_nuclei_2d",
        image=image,
        label=(mask > 0).astype(np.uint8),
        affine=np.eye(4),
        label_names={"nucleus": 1},
        source="stardist",
    )


