"""Conversions between the server's files (NIfTI label / uncertainty) and numpy arrays, and between grids.

Array convention: numpy arrays are indexed ``[k, j, i]`` (slice, row, column), the order of
``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage``. Geometry is a 4x4 ``ijk_to_lps``
matrix (ITK / DICOM physical space).

SimpleITK ships with 3D Slicer.
"""

import numpy as np

__all__ = [
    "DEFAULT_PALETTE",
    "label_colors",
    "label_items",
    "most_uncertain_slice",
    "read_geometry",
    "read_image",
    "remap_labels",
    "transfer_to_grid",
    "uncertainty_display_range",
    "write_image",
]

# Fallback colours (0-1 RGB) when the server declares no label_colors; the first ones follow Slicer's
# GenericAnatomyColors look (tissue, bone, ...), then well separated hues.
DEFAULT_PALETTE = (
    (0.50, 0.68, 0.50),
    (0.95, 0.84, 0.57),
    (0.69, 0.48, 0.40),
    (0.44, 0.71, 0.95),
    (0.85, 0.40, 0.35),
    (0.56, 0.45, 0.81),
    (0.98, 0.75, 0.25),
    (0.35, 0.80, 0.80),
)


def label_items(labels):
    """Label names and values as ``[(name, value)]`` sorted by value, background (0) left out.

    Args:
        labels: ``{"brain": 1}`` as in a model entry of ``/info/``, or a list of names (values 1, 2, ...).
    """
    if isinstance(labels, dict):
        items = [(str(name), int(value)) for name, value in labels.items()]
    else:
        items = [(str(name), index) for index, name in enumerate(labels or [], start=1)]
    return sorted(((n, v) for n, v in items if v != 0), key=lambda item: item[1])


def label_colors(labels, declared=None):
    """Colour (0-1 RGB) of each label: the server's ``label_colors`` when given, else ``DEFAULT_PALETTE``.

    Args:
        labels: as for ``label_items``.
        declared: optional ``{name: [r, g, b]}``; values above 1 are read as 0-255.
    """
    colors = {}
    for index, (name, _) in enumerate(label_items(labels)):
        rgb = (declared or {}).get(name)
        if rgb is not None and len(rgb) >= 3:
            rgb = [float(c) for c in rgb[:3]]
            if max(rgb) > 1.0:
                rgb = [c / 255.0 for c in rgb]
            colors[name] = tuple(rgb)
        else:
            colors[name] = DEFAULT_PALETTE[index % len(DEFAULT_PALETTE)]
    return colors


def _ijk_to_lps(image):
    matrix = np.eye(4)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def read_image(path):
    """Read an image file (NIfTI, NRRD, ...) into ``(array[k, j, i], ijk_to_lps)``."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, found {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: expected one component per voxel, found {image.GetNumberOfComponentsPerPixel()}")
    return sitk.GetArrayFromImage(image), _ijk_to_lps(image)


def read_geometry(path):
    """``(shape[k, j, i], ijk_to_lps)`` of an image file, from its header only (no voxels are read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, found {reader.GetDimension()}D")
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(reader.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(reader.GetSpacing())
    matrix[:3, 3] = reader.GetOrigin()
    return tuple(int(n) for n in reversed(reader.GetSize())), matrix


def transfer_to_grid(array, source_ijk_to_world, target_ijk_to_world, target_shape):
    """Voxels of ``array[k, j, i]`` on another grid of the same space (nearest neighbour, 0 outside).

    When both grids hold the same voxel centres in another axis order or direction (3D Slicer >= 5.8 loads a
    left-handed image with its K axis flipped), the result is an exact reordering of ``array``.

    Args:
        array: voxels on the source grid.
        source_ijk_to_world: 4x4 voxel-to-world matrix of the source grid.
        target_ijk_to_world: 4x4 voxel-to-world matrix of the target grid (same world space).
        target_shape: ``(k, j, i)`` size of the target grid.
    """
    array = np.asarray(array)
    target_shape = tuple(int(n) for n in target_shape)
    target_to_source = np.linalg.inv(np.asarray(source_ijk_to_world, float)) @ np.asarray(target_ijk_to_world, float)
    target_ijk = np.indices(target_shape).reshape(3, -1)[::-1]  # rows i, j, k
    source_ijk = np.rint(target_to_source[:3, :3] @ target_ijk + target_to_source[:3, 3:4]).astype(np.int64)
    inside = np.all((source_ijk >= 0) & (source_ijk < np.array(array.shape[::-1])[:, None]), axis=0)
    out = np.zeros(int(np.prod(target_shape)), dtype=array.dtype)
    i, j, k = source_ijk[:, inside]
    out[inside] = array[k, j, i]
    return out.reshape(target_shape)


def write_image(array, ijk_to_lps, path):
    """Write ``array[k, j, i]`` with the given geometry to ``path`` (format from the extension)."""
    import SimpleITK as sitk

    matrix = np.asarray(ijk_to_lps, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (matrix[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in matrix[:3, 3]])
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith(".gz"))
    return str(path)


def remap_labels(array, mapping):
    """Map label values: ``mapping`` ``{old: new}``; values missing from it become 0."""
    array = np.asarray(array)
    out = np.zeros(array.shape, dtype=np.uint16 if max(mapping.values(), default=0) > 255 else np.uint8)
    for old, new in mapping.items():
        out[array == old] = new
    return out


def uncertainty_display_range(array):
    """``(low, high)`` window for an uncertainty map: its minimum and 99.5th percentile (robust to outliers)."""
    values = np.asarray(array, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(np.percentile(values, 99.5))
    if high <= low:
        high = float(values.max()) if values.max() > low else low + 1.0
    return low, high


def most_uncertain_slice(array, axis=0):
    """Index of the slice along ``axis`` with the largest total uncertainty (``axis=0``: k, the slice axis)."""
    values = np.nan_to_num(np.asarray(array, dtype=float), nan=0.0)
    if values.ndim != 3:
        raise ValueError(f"expected a 3D uncertainty map, got shape {values.shape}")
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax(values.sum(axis=other)))
