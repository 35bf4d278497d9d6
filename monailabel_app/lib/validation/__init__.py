"""Checks on what clients send, before anything is stored, allocated or run.

Annotators upload whatever their scanner or 3D Slicer produced. The header is read first, with nibabel (NIfTI)
or pynrrd (NRRD), and refused from it (wrong format, 4D, 2D, too many voxels, degenerate affine) before any
voxel is read; the voxels are then read slab by slab through nibabel's ``ArrayProxy`` (never a whole volume in
memory) to find truncated data, NaN/Inf, empty images and label values outside the declared ones.

Each failure raises a :class:`ValidationError` (a ``ValueError``) whose message names the problem and whose
``status_code`` is the HTTP status a server should answer with (400 bad id, 404 unknown id, 409 conflict,
413 too large, 422 unusable content). :func:`to_http_exception` turns one into a FastAPI ``HTTPException``.

Limits (environment variables, read at each call):

* ``MEDSEGDIFF_MAX_VOXELS``: most voxels in an image (default 512³).
* ``MEDSEGDIFF_MAX_UPLOAD_MB``: largest uploaded file and largest HTTP request body (default 512).

Supported formats: NIfTI-1/2 (``.nii``, ``.nii.gz``) and single-file NRRD (``.nrrd``, raw/gzip/bzip2/ascii).

Modules: ``errors`` (the error types), ``ids`` (limits, ids and tags), ``sniff`` (what a misnamed file really
is), ``headers`` (nibabel / pynrrd headers), ``voxels`` (the slab scan), ``volumes`` (image and label checks),
``http`` (request-body limit middleware).

Example:
    >>> info = validate_image_file("/tmp/upload.nii.gz")          # doctest: +SKIP
    >>> validate_label_file("/tmp/label.nii.gz", "/tmp/upload.nii.gz", {"brain": 1})  # doctest: +SKIP
"""

from . import errors, http, ids, volumes
from .errors import *  # noqa: F401,F403
from .http import *  # noqa: F401,F403
from .ids import *  # noqa: F401,F403
from .volumes import *  # noqa: F401,F403

__all__ = [*errors.__all__, *ids.__all__, *volumes.__all__, *http.__all__]
