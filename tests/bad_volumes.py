"""The corpus of bad (and valid) uploads the reliability tests send: what annotators' scanners and 3D Slicer
really produce when something goes wrong (renamed files, cut-off uploads, 4D series, single slices, empty or NaN
volumes, broken affines, huge headers), generated in a folder, with the message fragment and HTTP status each must
get. Used by ``test_reliability_validation``, ``test_reliability_datastore`` and ``test_reliability_server``."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np



PNG_BYTES = (  # a real 1x1 PNG: signature, IHDR, IDAT, IEND
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
SHAPE = (16, 16, 12)
SPACING = (1.0, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------- corpus
def head_phantom(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    """A bright ellipsoid in a dim box: non-constant, integer-valued."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.5
    return (100 + 900 * inside).astype(dtype)


def affine_for(spacing=SPACING, rotation=None, origin=(-8.0, -8.0, -12.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, c = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = affine_for() if affine is None else affine
    if abs(np.linalg.det(affine[:3, :3])) > 1e-6:
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
    else:  # a qform cannot hold a degenerate matrix: write it as the sform only
        img = nib.Nifti1Image(data, None)
        img.header.set_qform(None, code=0)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes (header + voxels)."""
    img = nib.Nifti1Image(data, affine_for() if affine is None else affine)
    return img.to_bytes()


def write_nrrd(path: Path, data: np.ndarray, affine_ras: np.ndarray | None = None, **extra) -> Path:
    """NRRD in LPS space, the way 3D Slicer writes it."""
    affine = affine_for() if affine_ras is None else affine_ras
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:, :3].T,
        "space origin": lps[:, 3],
        "encoding": "gzip",
        **extra,
    }
    nrrd.write(str(path), data, header, index_order="F")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def huge_header(path: Path) -> Path:
    """A 1000³ int16 header followed by 10 data bytes (what a 2 GB volume cut at the start looks like)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 1000))
    header.set_data_dtype(np.int16)
    header.set_sform(affine_for(), code=1)
    header["vox_offset"] = 352
    return write_bytes(path, header.binaryblock + b"\x00" * 4 + b"\x01" * 10)


def _degenerate(matrix) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    return affine


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _cut_file(path: Path, fraction: float) -> Path:
    return write_bytes(path, _cut(path.read_bytes(), fraction))


def _nan_volume(value: float) -> np.ndarray:
    data = head_phantom().astype(np.float32)
    data[3, 4, 5] = value
    return data


BAD_IMAGES = {
    # name: (builder(tmp) -> path, expected fragment of the message, HTTP status)
    "text_file": (lambda t: write_bytes(t / "notes.nii.gz", b"patient notes: scan tomorrow\n" * 20), "text file", 422),
    "png_renamed": (lambda t: write_bytes(t / "scan.nii.gz", PNG_BYTES), "PNG image", 422),
    "png_renamed_nii": (lambda t: write_bytes(t / "scan.nii", PNG_BYTES), "PNG image", 422),
    "random_bytes": (
        lambda t: write_bytes(t / "random.nii.gz", np.random.default_rng(0).bytes(4096)),
        "not a gzip-compressed NIfTI",
        422,
    ),
    "empty_file": (lambda t: write_bytes(t / "empty.nii.gz", b""), "empty file", 422),
    "gzip_named_nii": (
        lambda t: write_bytes(t / "scan.nii", gzip.compress(nifti_bytes(head_phantom()))),
        "name it .nii.gz",
        422,
    ),
    "unsupported_suffix": (lambda t: write_bytes(t / "scan.png", PNG_BYTES), "unsupported file type", 422),
    "truncated_gzip": (
        lambda t: write_bytes(t / "cut.nii.gz", _cut(gzip.compress(nifti_bytes(head_phantom())), 0.6)),
        "truncated",
        422,
    ),
    "truncated_data": (  # a complete gzip stream whose NIfTI holds half the voxels its header declares
        lambda t: write_bytes(t / "short.nii.gz", gzip.compress(_cut(nifti_bytes(head_phantom()), 0.5))),
        "is truncated: the header declares 6144 bytes of voxel data but the file holds only",
        422,
    ),
    "truncated_nii": (lambda t: write_bytes(t / "cut.nii", _cut(nifti_bytes(head_phantom()), 0.7)), "truncated", 422),
    "four_d": (lambda t: write_nifti(t / "series.nii.gz", np.stack([head_phantom()] * 3, axis=-1)), "4D volume", 422),
    "two_d": (lambda t: write_nifti(t / "slice.nii.gz", head_phantom()[:, :, 5]), "2D image", 422),
    "single_slice": (lambda t: write_nifti(t / "slice.nii.gz", head_phantom()[:, :, 5:6]), "2D image", 422),
    "one_voxel": (lambda t: write_nifti(t / "voxel.nii.gz", np.ones((1, 1, 1), np.int16)), "single voxel", 422),
    "too_thin": (lambda t: write_nifti(t / "thin.nii.gz", head_phantom()[:, :, :2]), "too thin", 422),
    "huge_header": (lambda t: huge_header(t / "huge.nii"), "1,000,000,000 voxels", 413),
    "all_zero": (lambda t: write_nifti(t / "zero.nii.gz", np.zeros(SHAPE, np.int16)), "every voxel is zero", 422),
    "constant": (lambda t: write_nifti(t / "const.nii.gz", np.full(SHAPE, 7, np.int16)), "constant image", 422),
    "nan_voxel": (lambda t: write_nifti(t / "nan.nii.gz", _nan_volume(np.nan)), "1 NaN", 422),
    "inf_voxel": (lambda t: write_nifti(t / "inf.nii.gz", _nan_volume(np.inf)), "1 infinite", 422),
    "zero_affine": (
        lambda t: write_nifti(t / "flat.nii.gz", head_phantom(), _degenerate(np.diag([1.0, 1.0, 0.0]))),
        "not invertible",
        422,
    ),
    "collinear_affine": (
        lambda t: write_nifti(t / "skew.nii.gz", head_phantom(), _degenerate([[1, 1, 0], [0, 0, 0], [0, 0, 1]])),
        "not invertible",
        422,
    ),
    "complex_voxels": (
        lambda t: write_nifti(t / "complex.nii.gz", head_phantom().astype(np.complex64)),
        "unsupported voxel type",
        422,
    ),
    "nrrd_text": (lambda t: write_bytes(t / "scan.nrrd", b"just some text\n"), "not a NRRD image", 422),
    "nrrd_truncated": (
        lambda t: _cut_file(write_nrrd(t / "cut.nrrd", head_phantom(), encoding="raw"), 0.8),
        "truncated",
        422,
    ),
    "nrrd_detached": (
        lambda t: write_bytes(
            t / "scan.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: scan.raw\n\n",
        ),
        "detached",
        422,
    ),
    "nrrd_multicomponent": (
        lambda t: write_bytes(
            t / "seg.nrrd",
            b"NRRD0004\ntype: uchar\ndimension: 4\nsizes: 3 16 16 12\nkinds: list domain domain domain\n"
            b"space: left-posterior-superior\nspace directions: none (1,0,0) (0,1,0) (0,0,2)\n"
            b"space origin: (0,0,0)\nencoding: raw\n\n" + bytes(3 * 16 * 16 * 12),
        ),
        "3 components",
        422,
    ),
}

VALID_IMAGES = {
    "anisotropic_0.3x0.3x6mm": (
        lambda t: write_nifti(t / "aniso.nii.gz", head_phantom((64, 64, 8)), affine_for((0.3, 0.3, 6.0))),
        (0.3, 0.3, 6.0),
    ),
    "oblique": (
        lambda t: write_nifti(t / "oblique.nii.gz", head_phantom(), affine_for(SPACING, rotation(30, 20))),
        SPACING,
    ),
    "trailing_singleton_4th_dim": (lambda t: write_nifti(t / "t1.nii.gz", head_phantom()[..., None]), SPACING),
    "float32_nii": (lambda t: write_nifti(t / "float.nii", head_phantom(dtype=np.float32)), SPACING),
    "nrrd_lps": (lambda t: write_nrrd(t / "scan.nrrd", head_phantom()), SPACING),
    "nrrd_raw_big_endian": (
        lambda t: write_nrrd(t / "raw.nrrd", head_phantom().astype(">i2"), encoding="raw", endian="big"),
        SPACING,
    ),
    "nrrd_bzip2": (lambda t: write_nrrd(t / "bz.nrrd", head_phantom(), encoding="bzip2"), SPACING),
}


def make_bad_image(case: str, folder: Path) -> tuple[Path, str, int]:
    """The corpus file ``case`` written in ``folder``, its expected message fragment and HTTP status."""
    build, fragment, status = BAD_IMAGES[case]
    return build(folder), fragment, status


def label_for(image: np.ndarray) -> np.ndarray:
    return (image > 500).astype(np.uint8)


BAD_LABELS = {
    # name: (builder(tmp) -> label path, for an image written by write_nifti(head_phantom()), fragment)
    "shape_mismatch": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom())[:, :, :10]),
        "does not match the image shape",
    ),
    "affine_mismatch": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()), affine_for(origin=(-6.0, -8.0, -12.0))),
        "affine does not match",
    ),
    "value_outside": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()) * 2),
        "label values [2] outside the declared labels [0, 1]",
    ),
    "nan_label": (lambda t: write_nifti(t / "l.nii.gz", _nan_volume(np.nan)), "NaN"),
    "non_integer": (
        lambda t: write_nifti(t / "l.nii.gz", label_for(head_phantom()).astype(np.float32) * 0.5),
        "non-integer values (e.g. 0.5)",
    ),
    "text_label": (lambda t: write_bytes(t / "l.nii.gz", b"label\n" * 10), "text file"),
    "truncated_label": (
        lambda t: write_bytes(t / "l.nii.gz", _cut(gzip.compress(nifti_bytes(label_for(head_phantom()))), 0.5)),
        "truncated",
    ),
    "four_d_label": (lambda t: write_nifti(t / "l.nii.gz", np.stack([label_for(head_phantom())] * 2, -1)), "4D volume"),
}
