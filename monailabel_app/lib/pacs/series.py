"""A NIfTI volume as a DICOM MR image series (one instance per slice) with the volume's geometry.

:func:`volume_to_mr_series` turns a voxel array and its voxel-to-RAS affine into ``pydicom`` datasets that any
DICOM reader (SimpleITK/GDCM, which MONAI Label's DICOMweb datastore uses, 3D Slicer, Orthanc's viewer) puts
back on the same grid: voxel axis 0 runs along a row (``ImageOrientationPatient[:3]``), axis 1 down a column
(``[3:]``), axis 2 from slice to slice (``ImagePositionPatient`` of each slice). RAS is turned into DICOM's
LPS. Float voxels are stored as int16 with ``RescaleSlope`` / ``RescaleIntercept`` (65 535 levels over the
volume's range); integer voxels that fit int16 are stored as they are.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

__all__ = [
    "SeriesInfo", "MR_IMAGE_STORAGE", "volume_to_mr_series", "write_series", "affine_to_lps_geometry", "check_slice_stack"
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
"""SOP Class UID of MR Image Storage."""

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_ORTHOGONAL_TOLERANCE = 1e-4


@dataclass
class SeriesInfo:
    """Who and what the series belongs to. Empty UIDs are generated: derived from ``uid_seed`` when it is set
    (the same volume uploaded twice is then the same series, which a PACS stores once), random otherwise."""

    patient_id: str
    series_description: str
    patient_name: str = ""
    study_description: str = "MedSegDiff sample"
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_number: int = 1
    uid_seed: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def affine_to_lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(row direction, column direction, slice step vector, (dx, dy, dz))`` in LPS from a voxel-to-RAS affine.

    Raises:
        ValueError: the affine is not 4x4, has a zero-length axis, or its axes are not orthogonal (DICOM slices
            are planes stacked along their normal, up to a sign).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    axes = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if (spacing <= 0).any():
        raise ValueError(f"affine has a zero-length voxel axis (voxel sizes {spacing.tolist()})")
    unit = axes / spacing
    gram = unit.T @ unit
    if not np.allclose(gram, np.eye(3), atol=_ORTHOGONAL_TOLERANCE):
        raise ValueError("affine axes are not orthogonal (sheared grid): a DICOM slice stack cannot hold it")
    return unit[:, 0], unit[:, 1], axes[:, 2], (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _to_int16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored int16 voxels, slope, intercept)`` with ``value = stored * slope + intercept``."""
    if not np.isfinite(data).all():
        raise ValueError("the volume has NaN or Inf voxels: DICOM pixel data cannot hold them")
    if np.issubdtype(data.dtype, np.integer) and data.min() >= -32768 and data.max() <= 32767:
        return data.astype(np.int16), 1.0, 0.0
    rounded = np.round(data)
    if np.array_equal(rounded, data) and rounded.min() >= -32768 and rounded.max() <= 32767:
        return rounded.astype(np.int16), 1.0, 0.0
    low, high = float(data.min()), float(data.max())
    slope = (high - low) / 65535.0 if high > low else 1.0
    intercept = low + 32768.0 * slope
    stored = np.clip(np.round((data.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def volume_to_mr_series(data: np.ndarray, affine: np.ndarray, info: SeriesInfo) -> Iterator[Dataset]:
    """One MR Image Storage dataset per slice (axis 2) of ``data`` on the voxel-to-RAS ``affine``.

    Args:
        data: 3D voxel array (a 2D array is one slice).
        affine: 4x4 voxel-to-RAS affine (NIfTI convention), orthogonal axes.
        info: patient / study / series identity; empty UIDs are generated (and written back into ``info``,
            so a caller can find the series afterwards).

    Yields:
        The slices' datasets, in slice order, ready for ``save_as`` or a STOW-RS upload.

    Raises:
        ValueError: not 2D/3D, non-finite voxels, or an affine a slice stack cannot hold.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or min(data.shape) < 1:
        raise ValueError(f"volume must be 2D or 3D, got shape {data.shape}")
    row_dir, col_dir, slice_step, (dx, dy, dz) = affine_to_lps_geometry(affine)
    origin = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]
    stored, slope, intercept = _to_int16(data)
    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[info.uid_seed, *map(str, parts)] if info.uid_seed else None)

    info.study_instance_uid = info.study_instance_uid or uid("study")
    info.series_instance_uid = info.series_instance_uid or uid("series")
    frame_of_reference = uid(info.series_instance_uid, "frame of reference")
    now = datetime.datetime.now()
    for k in range(stored.shape[2]):
        ds = Dataset()
        sop_uid = uid(info.series_instance_uid, "instance", k)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
        ds.Modality = "MR"
        ds.PatientID = info.patient_id
        ds.PatientName = info.patient_name or info.patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = info.study_instance_uid, info.series_instance_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.StudyDescription, ds.SeriesDescription = info.study_description, info.series_description
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", info.series_number, k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds(v) for v in origin + k * slice_step]
        ds.PixelSpacing = [_ds(dy), _ds(dx)]  # (between rows, between columns)
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(dz)
        ds.SliceLocation = _ds(float(np.dot(origin + k * slice_step, np.cross(row_dir, col_dir))))
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]  # a row runs along voxel axis 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        for key, value in info.extra.items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        yield ds


def write_series(data: np.ndarray, affine: np.ndarray, info: SeriesInfo, folder: str | Path) -> list[Path]:
    """Write :func:`volume_to_mr_series` into ``folder`` (``slice_0001.dcm`` …); returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in volume_to_mr_series(data, affine, info):
        path = folder / f"slice_{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(str(path), write_like_original=False)
        paths.append(path)
    return paths


def check_slice_stack(datasets: list[Dataset], name: str = "series") -> None:
    """Refuse a series whose slices do not form one regular volume (what a NIfTI grid can hold).

    Checked from the headers: one orientation, pixel spacing and size for all slices, positions on one line
    along the slice normal, distinct, evenly spaced (±5 %). A radial or scout series, or one with a missing
    slice, would otherwise be converted to a volume with the wrong geometry.

    Raises:
        ValueError: naming what differs.
    """
    if not datasets:
        raise ValueError(f"{name} has no image instances")
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        return  # one multi-frame instance carries its own per-frame geometry
    try:
        orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        sizes = {(int(ds.Rows), int(ds.Columns), *(round(float(v), 4) for v in ds.PixelSpacing)) for ds in datasets}
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{name} lacks the geometry of a volume (ImageOrientationPatient, ImagePositionPatient, PixelSpacing): {e}") from e
    if np.abs(orientations - orientations[0]).max() > _ORTHOGONAL_TOLERANCE * 10:
        raise ValueError(f"{name} is not a volume: its {len(datasets)} slices have different orientations")
    if len(sizes) > 1:
        raise ValueError(f"{name} is not a volume: its slices differ in size or pixel spacing {sorted(sizes)}")
    if len(datasets) == 1:
        return
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    order = np.argsort(positions @ normal)
    along = (positions @ normal)[order]
    offsets = positions[order] - np.outer(along, normal)
    steps = np.diff(along)
    if np.abs(offsets - offsets[0]).max() > 0.1 or steps.min() <= 1e-3:
        raise ValueError(f"{name} is not a volume: its slice positions are not distinct points on the slice normal")
    if np.abs(steps - np.median(steps)).max() > 0.05 * np.median(steps):
        raise ValueError(f"{name} is not a volume: uneven slice spacing {np.round(steps, 3).tolist()} mm (a missing slice?)")
