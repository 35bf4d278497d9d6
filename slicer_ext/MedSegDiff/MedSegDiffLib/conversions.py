"""Conversions between the server's files (NIfTI label / uncertainty) and numpy arrays, and ``.seg.nrrd``.

Array convention: numpy arrays are indexed ``[k, j, i]`` (slice, row, column), the order of
``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage``. Geometry is a 4x4 ``ijk_to_lps``
matrix (ITK / DICOM physical space), the convention of ``slicerio``.

SimpleITK ships with 3D Slicer; ``slicerio`` (and ``pynrrd``) are installed on first use by the module.
"""

import numpy as np

__all__ = [
    "DEFAULT_PALETTE",
    "label_colors",
    "label_items",
    "most_uncertain_slice",
    "read_geometry",
    "read_image",
    "read_seg_nrrd",
    "remap_labels",
    "transfer_to_grid",
    "uncertainty_display_range",
    "write_image",
    "write_label_as_seg_nrrd",
    "write_seg_nrrd",
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


def write_seg_nrrd(path, label_array, ijk_to_lps, labels, colors=None):
    """Write a label array as a Slicer segmentation (``.seg.nrrd``), one segment per label.

    Every declared label gets a segment (empty ones too, so the annotator can paint what the model
    missed); the segment ID and name are the label name, the colour comes from ``colors``.

    Args:
        path: output file, normally ending in ``.seg.nrrd``.
        label_array: integer ``array[k, j, i]``.
        ijk_to_lps: 4x4 voxel-to-LPS matrix.
        labels: ``{name: value}`` (or list of names).
        colors: ``{name: (r, g, b)}`` 0-1; ``label_colors(labels)`` when None.

    Raises:
        ValueError: if the array holds a value that no label declares.
    """
    import slicerio

    items = label_items(labels)
    colors = colors or label_colors(labels)
    label_array = np.asarray(label_array)
    known = {0} | {value for _, value in items}
    unknown = sorted(int(v) for v in np.unique(label_array) if int(v) not in known)
    if unknown:
        raise ValueError(f"label image holds values {unknown} that the server's labels {dict(items)} do not declare")
    max_value = max(known)
    dtype = np.uint8 if max_value < 256 else np.uint16
    segmentation = {
        "voxels": np.ascontiguousarray(label_array.astype(dtype).transpose(2, 1, 0)),  # [i, j, k] for NRRD
        "ijkToLPS": np.asarray(ijk_to_lps, dtype=float),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": [
            {
                "id": name,
                "name": name,
                "labelValue": value,
                "layer": 0,
                "color": [float(c) for c in colors.get(name, DEFAULT_PALETTE[0])],
                "nameAutoGenerated": False,
                "colorAutoGenerated": False,
            }
            for name, value in items
        ],
    }
    slicerio.write_segmentation(str(path), segmentation)
    return str(path)


def write_label_as_seg_nrrd(label_path, seg_path, labels, colors=None):
    """Convert the server's label file (NIfTI) to a ``.seg.nrrd`` with segment names and colours."""
    array, ijk_to_lps = read_image(label_path)
    return write_seg_nrrd(seg_path, array, ijk_to_lps, labels, colors)


def read_seg_nrrd(path):
    """Read a ``.seg.nrrd`` written by Slicer or ``write_seg_nrrd``.

    Returns:
        ``(label_array[k, j, i], ijk_to_lps, segments)`` where ``segments`` is a list of dicts with
        ``id``, ``name``, ``labelValue``, ``layer`` and ``color``. Single-layer files only.
    """
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim != 3:
        raise ValueError(f"{path}: segments overlap (several layers); merge them before reading")
    segments = [
        {key: segment.get(key) for key in ("id", "name", "labelValue", "layer", "color")}
        for segment in segmentation.get("segments", [])
    ]
    return voxels.transpose(2, 1, 0), np.asarray(segmentation["ijkToLPS"], dtype=float), segments


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
