"""Real scans carried by registry packages, and the built-in sample datastore of the MONAI Label server.

Every scan here is a real acquisition or template that installs from PyPI or Debian (see
``docs/data.md``): nothing is synthetic and nothing is downloaded at run time. Volumes are
reoriented to RAS with :func:`nibabel.as_closest_canonical`, so image and label arrays align
voxel by voxel.

Example:
    >>> scan = load_robex_head()
    >>> images, labels = brain_slices_2d(scan, spacing_mm=2.0, size=(96, 96))

Command line::

    python -m medsegdiff.sample_data build /path/to/datastore [--force]
    python -m medsegdiff.sample_data list
"""


from __future__ import annotations

from .cat12 import load_cat12_tissue
from .datastore import MANIFEST_NAME, REFERENCE_DIRNAME, build_sample_datastore, read_manifest
from .dicom import load_dicom_mr_lesion
from .heads import load_colin27, load_robex_head
from .microscopy import load_stardist_nuclei_2d
from .mni import load_mni152_brain, load_mni152_tissue
from .registry import LOADERS, available_scans
from .scan import Scan
from .slices import brain_slices_2d, normalize_intensity, normalized_on_grid

__all__ = [
    "Scan",
    "load_robex_head",
    "load_colin27",
    "load_mni152_tissue",
    "load_mni152_brain",
    "load_cat12_tissue",
    "load_stardist_nuclei_2d",
    "load_dicom_mr_lesion",
    "LOADERS",
    "available_scans",
    "normalize_intensity",
    "normalized_on_grid",
    "brain_slices_2d",
    "build_sample_datastore",
    "read_manifest",
    "MANIFEST_NAME",
    "REFERENCE_DIRNAME",
    ]
