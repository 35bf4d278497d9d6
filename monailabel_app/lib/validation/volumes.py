"""The checks on images and labels: header first (refused before any voxel is read), then one pass over the voxels."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidIdError, NotFoundError, TooLargeError, ValidationError
from .headers import VolumeHeader, read_header
from .ids import validate_id, validate_upload_size, voxel_limit
from .voxels import MAX_LABEL_VALUES_REPORTED, scan_voxels

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "MIN_AXIS_SIZE",
    "VolumeInfo",
    "label_value_set",
    "validate_image_file",
    "validate_label_file",
    "validate_infer_image",
]

MIN_AXIS_SIZE = 4
"""Smallest number of voxels along each axis of an image (a thinner one is a slice, not a volume)."""
AFFINE_TOLERANCE_MM = 0.01
"""Largest difference (mm, per affine entry) between a label's and its image's voxel-to-world matrix."""


@dataclass(frozen=True)
class VolumeInfo:
    """What a valid image or label file holds.

    Attributes:
        path: the file.
        format: ``"NIfTI"`` or ``"NRRD"``.
        shape: the 3 spatial sizes (singleton extra axes dropped).
        spacing: voxel sizes in mm.
        affine: voxel → RAS (mm) 4×4 matrix.
        dtype: voxel type as stored.
        minimum, maximum: range of the (scaled, finite) values.
        values: the distinct values of a label (empty for images and maps).
    """

    path: str
    format: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    dtype: str
    minimum: float
    maximum: float
    values: tuple[int, ...] = ()


def _fmt(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _spatial_shape(header: VolumeHeader, name: str, max_components: int = 1) -> tuple[int, int, int]:
    """The 3 spatial sizes; refuses 4D / multi-component data (beyond ``max_components``), 2D images, single voxels."""
    shape = header.shape
    if any(s <= 0 for s in shape):
        raise ValidationError(f"{name}: the header declares an empty image (shape {_fmt(shape)})")
    extra = [shape[i] for i in range(len(shape)) if i not in header.spatial_axes]
    if math.prod(extra) > max_components:
        if header.format == "NIfTI" and len(shape) >= 4:
            raise ValidationError(
                f"{name} is a 4D volume (shape {_fmt(shape)}, {math.prod(shape[3:])} volumes): send one 3D volume"
            )
        raise ValidationError(
            f"{name} has {math.prod(extra)} components per voxel (shape {_fmt(shape)}): send a scalar 3D volume"
        )
    spatial = [shape[i] for i in header.spatial_axes]
    if all(s == 1 for s in spatial):
        raise ValidationError(f"{name} is a single voxel (shape {_fmt(shape)}): send a 3D volume")
    if len(spatial) < 3 or any(s == 1 for s in spatial):
        raise ValidationError(f"{name} is a 2D image (shape {_fmt(shape)}): send a 3D volume")
    if len(spatial) > 3:
        raise ValidationError(f"{name} has {len(spatial)} spatial axes (shape {_fmt(shape)}): send a 3D volume")
    if any(s < MIN_AXIS_SIZE for s in spatial):
        raise ValidationError(
            f"{name} is too thin (shape {_fmt(shape)}): every axis needs at least {MIN_AXIS_SIZE} voxels"
        )
    return spatial[0], spatial[1], spatial[2]


def _check_affine(affine: np.ndarray, name: str) -> tuple[float, float, float]:
    """Voxel sizes (mm) of a usable voxel-to-world matrix; oblique and anisotropic grids are fine."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValidationError(f"{name}: the voxel-to-world affine has NaN or infinite entries")
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing < 1e-6) or np.any(spacing > 1e5):
        raise ValidationError(
            f"{name}: degenerate voxel-to-world affine (voxel sizes {np.round(spacing, 6).tolist()} mm): "
            "the affine is not invertible"
        )
    directions = matrix / spacing
    if abs(np.linalg.det(directions)) < 1e-3:
        raise ValidationError(
            f"{name}: degenerate voxel-to-world affine (its axes are collinear, determinant "
            f"{np.linalg.det(matrix):.3g}): the affine is not invertible"
        )
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def _checked_header(
    path: str, name: str, max_vox: float, max_components: int = 1
) -> tuple[VolumeHeader, tuple[int, int, int], tuple[float, float, float]]:
    header = read_header(path, name)
    shape = _spatial_shape(header, name, max_components)
    total = math.prod(header.shape)
    if total > max_vox:
        raise TooLargeError(
            f"{name} has {total:,} voxels ({_fmt(header.shape)}), more than the limit of {max_vox:,} voxels "
            "(MEDSEGDIFF_MAX_VOXELS): image size refused before reading it"
        )
    if header.dtype.kind not in "iuf":
        raise ValidationError(f"{name}: unsupported voxel type {header.dtype} (RGB, complex, ...); send scalar voxels")
    spacing = _check_affine(header.affine, name)
    return header, shape, spacing
def validate_image_file(
    path: str | os.PathLike,
    max_voxels: int | None = None,
    max_bytes: int | None = None,
    name: str | None = None,
) -> VolumeInfo:
    """Check an uploaded image; return what it holds or raise :class:`ValidationError` naming the problem.

    Refused: unsupported or renamed files (text, PNG, random bytes), files over ``max_bytes``, headers
    declaring more than ``max_voxels`` (before any voxel is read), 4D/multi-component, 2D, single-voxel or
    thinner-than-``MIN_AXIS_SIZE`` volumes, non-scalar voxel types, degenerate (non-invertible) affines,
    truncated voxel data, NaN/Inf voxels, and constant images (e.g. all zero). Oblique and anisotropic
    grids are valid. Memory use is bounded by one chunk of voxels, whatever the image size.

    Args:
        path: the file (its name must end with ``.nii``, ``.nii.gz`` or ``.nrrd``).
        max_voxels: most voxels; default ``MEDSEGDIFF_MAX_VOXELS`` or 512³.
        max_bytes: largest file; default ``MEDSEGDIFF_MAX_UPLOAD_MB`` or 512 MiB.
        name: how messages call the file (default: its file name).
    """
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if not os.path.isfile(path):
        raise NotFoundError(f"{name}: no such file")
    validate_upload_size(path, max_bytes)
    limit = voxel_limit() if max_voxels is None else max_voxels
    header, shape, spacing = _checked_header(path, name, limit)
    stats = scan_voxels(header, name, collect_values=False)
    if stats.nan or stats.inf:
        raise ValidationError(
            f"{name} has {stats.nan} NaN and {stats.inf} infinite voxels: fix or mask them before upload"
        )
    if stats.minimum == stats.maximum:
        what = "zero (an empty image)" if stats.minimum == 0 else f"{stats.minimum:g} (a constant image)"
        raise ValidationError(f"{name}: every voxel is {what}; nothing to segment")
    dtype = str(header.dtype)
    return VolumeInfo(path, header.format, shape, spacing, header.affine, dtype, stats.minimum, stats.maximum)


def label_value_set(labels: Mapping[str, int] | Iterable[int]) -> frozenset[int]:
    """Allowed label values: a ``{name: value}`` dict (MONAI Label's ``labels``) gets 0 added for background."""
    if isinstance(labels, Mapping):
        return frozenset({0, *(int(v) for v in labels.values())})
    return frozenset(int(v) for v in labels)


def validate_label_file(
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
    allowed_values: Mapping[str, int] | Iterable[int] | None,
    max_bytes: int | None = None,
    affine_tolerance_mm: float = AFFINE_TOLERANCE_MM,
    name: str | None = None,
    max_components: int = 1,
) -> VolumeInfo:
    """Check a label against its image; return what it holds or raise :class:`ValidationError`.

    Refused: everything :func:`validate_image_file` refuses about the file itself (except an all-zero
    label, which is a valid "nothing here"), a shape or voxel-to-world affine (beyond
    ``affine_tolerance_mm`` per entry) different from the image's, NaN/Inf, non-integer values, and values
    outside ``allowed_values``.

    Args:
        label_path: the label file.
        image_path: the image it annotates (its header is read, not its voxels).
        allowed_values: label values (e.g. ``{0, 1}``), or ``{name: value}`` (0 added), or None for a
            continuous map such as an uncertainty map (only geometry and finiteness are checked).
        max_bytes: largest file; default ``MEDSEGDIFF_MAX_UPLOAD_MB``.
        affine_tolerance_mm: largest difference per affine entry.
        name: how messages call the label file (default: its file name).
        max_components: values per voxel a map may hold (a 4th NIfTI axis, e.g. one probability per class).
    """
    label_path, image_path = os.fspath(label_path), os.fspath(image_path)
    name = name or os.path.basename(label_path)
    if not os.path.isfile(label_path):
        raise NotFoundError(f"{name}: no such file")
    validate_upload_size(label_path, max_bytes)
    image, image_shape, _ = _checked_header(image_path, "the image", math.inf)
    most_voxels = max(math.prod(image.shape), 1) * max_components  # the image bounds the label's size
    label, shape, spacing = _checked_header(label_path, name, most_voxels, max_components)
    if shape != image_shape:
        raise ValidationError(f"{name}: label shape {_fmt(shape)} does not match the image shape {_fmt(image_shape)}")
    difference = float(np.max(np.abs(label.affine[:3] - image.affine[:3])))
    if difference > affine_tolerance_mm:
        raise ValidationError(
            f"{name}: label affine does not match the image affine (largest difference {difference:.4g} mm, "
            f"tolerance {affine_tolerance_mm} mm): it was drawn on another grid"
        )
    allowed = None if allowed_values is None else label_value_set(allowed_values)
    stats = scan_voxels(label, name, collect_values=allowed is not None)
    if stats.nan or stats.inf:
        raise ValidationError(f"{name} has {stats.nan} NaN and {stats.inf} infinite values")
    values: tuple[int, ...] = ()
    if allowed is not None:
        if stats.non_integer is not None:
            raise ValidationError(f"{name} has non-integer values (e.g. {stats.non_integer:g}): a label holds integers")
        if stats.too_many_values:
            raise ValidationError(
                f"{name} has more than {MAX_LABEL_VALUES_REPORTED} distinct values: an image, not a label? "
                f"Allowed label values: {sorted(allowed)}"
            )
        values = tuple(sorted(int(v) for v in stats.values))
        outside = sorted(set(values) - allowed)
        if outside:
            raise ValidationError(f"{name} has label values {outside} outside the declared labels {sorted(allowed)}")
    dtype = str(label.dtype)
    return VolumeInfo(
        label_path, label.format, shape, spacing, label.affine, dtype, stats.minimum, stats.maximum, values
    )


def validate_infer_image(image: Any, known_ids: Iterable[str]) -> str:
    """Check the ``image`` of an infer request before the task reads it.

    MONAI Label's ``infer`` uses ``request["image"]`` as a file path whenever such a path exists on the
    server, so ``?image=/etc/...`` (or ``"image"`` in the JSON params) would read any server file. Allowed:
    a datastore id from ``known_ids``, or a file uploaded with the request (the endpoint saves it as
    ``<tempdir>/tmp*``; it is then validated like an upload).

    Returns:
        ``image`` unchanged (also when it is not a string: an array passed in-process, never over HTTP).
    """
    if not isinstance(image, str):
        return image
    if image in set(known_ids):
        return image
    if os.path.isabs(image):
        folder = os.path.realpath(tempfile.gettempdir())
        real = os.path.realpath(image)
        if os.path.dirname(real) == folder and os.path.basename(real).startswith("tmp") and os.path.isfile(real):
            validate_image_file(real, name="uploaded image")
            return image
        raise InvalidIdError("image must be a datastore image id or an uploaded file, not a server path")
    validate_id(image)
    raise NotFoundError(f"image {image!r} is not in the datastore")


