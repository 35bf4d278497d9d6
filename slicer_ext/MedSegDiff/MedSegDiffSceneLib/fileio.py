"""The one seam between the Logic and Slicer's file readers and writers.

In 3D Slicer, ``SlicerUtilFileIO`` goes through ``slicer.util`` (the application's IO manager, the same path as
"Add data"). Without the application (``slicer-core`` from PyPI, trame-slicer), ``StorageNodeFileIO`` makes the
calls the C++ readers and writers make: ``vtkSlicerVolumesLogic.AddArchetypeVolume`` (what Slicer's volume
reader calls, ``vtkMRMLVolumeArchetypeStorageNode`` underneath, so a left-handed file is loaded the way
Slicer loads it) and a storage node's ``WriteData``.
"""

import os

import slicer

__all__ = ["SlicerUtilFileIO", "StorageNodeFileIO", "defaultFileIO"]

# vtkSlicerVolumesLogic::AddArchetypeVolume loading options (bit-coded)
_LABEL_MAP = 1
_SINGLE_FILE = 4
_AUTO_WINDOW_LEVEL = 8


class SlicerUtilFileIO:
    """Readers and writers of the running 3D Slicer application (``slicer.util``)."""

    def loadVolume(self, path, name, labelmap=False):
        """Load ``path`` as a scalar (or labelmap) volume node named ``name``; not shown in the views."""
        properties = {"name": name, "show": False, "singleFile": True}
        if labelmap:
            return slicer.util.loadLabelVolume(path, properties)
        return slicer.util.loadVolume(path, properties)

    def writeNode(self, node, path):
        """Write a storable node to ``path`` (format from the extension); the scene's storage is left alone."""
        if hasattr(slicer.util, "exportNode"):  # Slicer >= 5.2
            slicer.util.exportNode(node, path)
        elif not slicer.util.saveNode(node, path):
            raise RuntimeError(f"Could not write '{node.GetName()}' to {path}")
        return path


class StorageNodeFileIO:
    """The storage-node calls Slicer's readers and writers make, for a scene without the application.

    Args:
        volumesLogic: a ``vtkSlicerVolumesLogic`` with its MRML scene set.
    """

    def __init__(self, volumesLogic):
        self.volumesLogic = volumesLogic

    def loadVolume(self, path, name, labelmap=False):
        """Load ``path`` as a scalar (or labelmap) volume node named ``name``."""
        options = _SINGLE_FILE | (_LABEL_MAP if labelmap else _AUTO_WINDOW_LEVEL)
        node = self.volumesLogic.AddArchetypeVolume(str(path), name, options)
        if node is None:
            raise RuntimeError(f"Slicer could not read {path} as a volume")
        return node

    def writeNode(self, node, path):
        """Write a volume node to ``path`` with a temporary storage node (the node's own one is left alone)."""
        scene = node.GetScene()
        storage = node.CreateDefaultStorageNode()
        scene.AddNode(storage)
        try:
            storage.SetFileName(os.fspath(path))
            if not storage.WriteData(node):
                raise RuntimeError(f"Could not write '{node.GetName()}' to {path}")
        finally:
            scene.RemoveNode(storage)
        return os.fspath(path)


def defaultFileIO():
    """``SlicerUtilFileIO`` inside the Slicer application, else ``StorageNodeFileIO`` on ``slicer.modules.volumes``."""
    if hasattr(slicer, "app"):
        return SlicerUtilFileIO()
    modules = getattr(slicer, "modules", None)
    if modules is None or not hasattr(modules, "volumes"):
        raise ValueError("Outside the Slicer application, pass fileIO=StorageNodeFileIO(volumesLogic) to the Logic.")
    return StorageNodeFileIO(modules.volumes.logic())
