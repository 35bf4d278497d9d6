"""``MedSegDiffLogic``: everything the module does to the server and the MRML scene, without Qt.

Imports only ``slicer``, ``vtk`` and ``MedSegDiffLib``: it runs in 3D Slicer and on Slicer's libraries from PyPI
(``slicer-core``), where the tests drive it against a real MONAI Label server.
"""

import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import slicer

from MedSegDiffLib import MedSegDiffClient, ServerError, ServerInfo, TrainingPoller, read_geometry, validate_params

from . import display
from .fileio import defaultFileIO
from .interactive import SCRIBBLE_SEGMENTS, InteractiveCorrection
from .segments import exportSegmentsOnGrid, ijkToRasArray, importLabelToSegmentation

__all__ = ["FINAL_TAG", "IMAGE_ID_ATTRIBUTE", "MODULE_NAME", "UNCERTAINTY_TAG", "MedSegDiffLogic"]

MODULE_NAME = "MedSegDiff"
IMAGE_ID_ATTRIBUTE = "MedSegDiff.ImageId"
SERVER_GRID_ATTRIBUTE = "MedSegDiff.ServerGrid"
UNCERTAINTY_TAG = "uncertainty"
FINAL_TAG = "final"


def _noReport(fraction=None, message=""):
    logging.debug(f"MedSegDiff: {message}")


class MedSegDiffLogic:
    """Everything the module does, usable from scripts and tests without the widget; never opens dialogs.

    Methods taking ``report`` as first argument only talk to the server and write temporary files: they are safe
    to run in a background thread. The others touch the MRML scene and must run in the main thread. ``process``
    chains them for synchronous use.

    Args:
        scene: the MRML scene to work on (``slicer.mrmlScene`` when None).
        fileIO: Slicer's readers and writers (``fileio.defaultFileIO()`` when None).
    """

    UNCERTAINTY_ATTRIBUTE = "MedSegDiff.Uncertainty"

    def __init__(self, scene=None, fileIO=None):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.fileIO = fileIO if fileIO is not None else defaultFileIO()
        self.client = None
        self.serverInfo = None
        self.model = None
        self.trainer = None
        self.tempDir = tempfile.mkdtemp(prefix="MedSegDiff-")
        self.interactive = InteractiveCorrection(self)  # points, scribbles, Refine and Undo on the current result

    def cleanup(self):
        """Remove the temporary folder (downloads and exports not yet cleaned up)."""
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def _newFolder(self, name):
        """A fresh folder under ``tempDir`` for one request (removed once its files are in the scene or sent)."""
        os.makedirs(self.tempDir, exist_ok=True)
        return tempfile.mkdtemp(prefix=self.imageIdFromName(name) + "-", dir=self.tempDir)

    def getParameterNode(self):
        """The module's singleton ``vtkMRMLScriptedModuleNode`` in the scene (created when missing)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node = self.scene.AddNode(node)
        if node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    # -- server ---------------------------------------------------------------------------------------

    def connect(self, serverUrl, token=None):
        """Read ``/info/`` and remember the server; returns ``ServerInfo``. Thread-safe."""
        client = MedSegDiffClient(serverUrl, token=token)
        info = ServerInfo.from_json(client.info())
        model = info.default_model()
        if model is None:
            raise ServerError(f"The server at {client.server_url} serves no segmentation model.")
        self.client, self.serverInfo, self.model = client, info, model
        self.trainer = model if model in info.trainers else next(iter(info.trainers), None)
        return info

    def selectModel(self, name):
        """Use another model of the server (``ValueError`` naming it when not served)."""
        self.serverInfo.model(name)
        self.model = name
        if name in self.serverInfo.trainers:
            self.trainer = name

    def _requireConnection(self):
        if self.client is None or self.serverInfo is None:
            raise ServerError("Not connected: connect to a MONAI Label server first.")

    # -- images ---------------------------------------------------------------------------------------

    @staticmethod
    def imageId(volumeNode):
        """Datastore id of a volume that came from / was uploaded to the server, else None."""
        return volumeNode.GetAttribute(IMAGE_ID_ATTRIBUTE) if volumeNode else None

    @staticmethod
    def imageIdFromName(name):
        """A datastore-safe image id made from a node name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "image").strip("_.") or "image"

    @staticmethod
    def serverGrid(volumeNode):
        """``(shape[k, j, i], ijkToRas)`` of the volume's file on the server (the node's own grid if unknown)."""
        stored = volumeNode.GetAttribute(SERVER_GRID_ATTRIBUTE)
        if stored:
            grid = json.loads(stored)
            return tuple(grid["shape"]), np.array(grid["ijkToRas"], dtype=float).reshape(4, 4)
        return tuple(reversed(volumeNode.GetImageData().GetDimensions())), ijkToRasArray(volumeNode)

    @staticmethod
    def _tagServerImage(volumeNode, imageId, shape, ijkToRas):
        volumeNode.SetAttribute(IMAGE_ID_ATTRIBUTE, imageId)
        grid = {"shape": [int(n) for n in shape], "ijkToRas": [float(v) for v in np.ravel(ijkToRas)]}
        volumeNode.SetAttribute(SERVER_GRID_ATTRIBUTE, json.dumps(grid))

    def downloadNextSample(self, report, strategy=None):
        """Ask the active learning strategy for the next image and download it. Thread-safe.

        Returns:
            ``{"id", "path"}`` or None when the strategy has nothing left.
        """
        self._requireConnection()
        strategy = strategy or self.serverInfo.default_strategy()
        report(None, f"Asking strategy '{strategy}' for the next image ...")
        sample = self.client.next_sample(strategy)
        if sample is None:
            return None
        report(None, f"Downloading '{sample['id']}' ...")
        return {"id": sample["id"], "path": self.client.download_image(sample["id"], self._newFolder(sample["id"]))}

    def loadSample(self, sample):
        """Load a downloaded sample as a volume node tagged with its image id and file grid. Main thread."""
        try:
            shape, ijkToLps = read_geometry(sample["path"])
            volumeNode = self.fileIO.loadVolume(sample["path"], sample["id"])
        finally:
            shutil.rmtree(os.path.dirname(sample["path"]), ignore_errors=True)
        volumeNode.StorableModified()  # its file is gone: a scene save writes the volume
        self._tagServerImage(volumeNode, sample["id"], shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijkToLps)
        return volumeNode

    def fetchNextSample(self, strategy=None):
        """Synchronous ``downloadNextSample`` + ``loadSample``; returns the volume node or None."""
        sample = self.downloadNextSample(_noReport, strategy)
        return self.loadSample(sample) if sample else None

    def writeVolume(self, volumeNode):
        """Write the volume to a temporary NIfTI file for upload (scene storage is left alone). Main thread."""
        name = self.imageIdFromName(volumeNode.GetName())
        return self.fileIO.writeNode(volumeNode, os.path.join(self._newFolder(name), name + ".nii.gz"))

    def uploadFile(self, report, path, imageId):
        """Upload an image file to the datastore, then remove the file; returns the id the server kept. Thread-safe."""
        self._requireConnection()
        report(None, f"Uploading {os.path.basename(path)} ...")
        try:
            return self.client.upload_image(path, imageId)
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def tagUploaded(self, volumeNode, serverId):
        """Mark a volume as the datastore image ``serverId``, written on its own grid. Main thread."""
        self._tagServerImage(volumeNode, serverId, *self.serverGrid(volumeNode))

    def uploadVolume(self, volumeNode, imageId=None):
        """Synchronous upload of a volume node; tags the node with its image id and returns it."""
        imageId = imageId or self.imageId(volumeNode) or self.imageIdFromName(volumeNode.GetName())
        serverId = self.uploadFile(_noReport, self.writeVolume(volumeNode), imageId)
        self.tagUploaded(volumeNode, serverId)
        return serverId

    # -- inference ------------------------------------------------------------------------------------

    def prepareInput(self, volumeNode):
        """Main-thread part before inference: the image id, or a file to upload first."""
        if volumeNode is None:
            raise ValueError("Select a volume to segment.")
        imageId = self.imageId(volumeNode)
        if imageId:
            return {"imageId": imageId, "uploadPath": None}
        return {"imageId": self.imageIdFromName(volumeNode.GetName()), "uploadPath": self.writeVolume(volumeNode)}

    def runRemote(self, report, prepared, params, labelIn=None):
        """Server part of inference: upload if needed, infer, download the uncertainty map. Thread-safe.

        ``params`` may hold ``foreground`` / ``background`` clicks and ``labelIn`` is a scribble file (Refine).
        """
        self._requireConnection()
        points = {name: params[name] for name in ("foreground", "background") if name in params}
        scalars = {name: value for name, value in params.items() if name not in points}
        params = {**validate_params(scalars, self.serverInfo.parameters(self.model)), **points}
        imageId = prepared["imageId"]
        if prepared.get("uploadPath"):
            report(0.05, "Uploading the volume ...")
            imageId = self.uploadFile(report, prepared["uploadPath"], imageId)
        report(None, f"Running {self.model} on '{imageId}' ({params}) ...")
        folder = self._newFolder(imageId)
        infer = self.client.infer(self.model, imageId, params, dest_dir=folder, label_in=labelIn)
        report(0.8, "Downloading the uncertainty map ...")
        warnings = []
        try:
            uncertaintyPath = self.client.download_label(imageId, UNCERTAINTY_TAG, dest_dir=folder)
        except ServerError as e:
            if e.status != 404:
                raise
            warnings.append(f"no uncertainty map for '{imageId}': {e}")  # logged by importResults
            uncertaintyPath = None
        report(1.0, "Done.")
        return {
            "imageId": imageId,
            "uploaded": bool(prepared.get("uploadPath")),
            "labelPath": infer.label_path,
            "uncertaintyPath": uncertaintyPath,
            "folder": folder,
            "result": infer.result,
            "params": params,
            "warnings": warnings,
        }

    def importResults(self, volumeNode, remote):
        """Main-thread part after inference: segmentation node and uncertainty overlay.

        Returns:
            ``{"imageId", "segmentation", "uncertainty" (or None), "result"}``.
        """
        for warning in remote.get("warnings", []):
            logging.warning(f"MedSegDiff: {warning}")
        if remote.get("uploaded") or not self.imageId(volumeNode):
            self.tagUploaded(volumeNode, remote["imageId"])
        name = f"{volumeNode.GetName()} {self.model}"
        labels, colors = self.serverInfo.labels(self.model), self.serverInfo.colors(self.model)
        try:
            segmentationNode = importLabelToSegmentation(
                self.scene, self.fileIO, remote["labelPath"], volumeNode, labels, colors, name
            )
            uncertaintyNode = None
            if remote.get("uncertaintyPath"):
                uncertaintyNode = self.fileIO.loadVolume(remote["uncertaintyPath"], f"{name} uncertainty")
                uncertaintyNode.SetAttribute(self.UNCERTAINTY_ATTRIBUTE, "1")
                uncertaintyNode.StorableModified()
                self.showUncertainty(volumeNode, uncertaintyNode)
            else:
                display.setSliceLayers(self.scene, volumeNode)
        finally:
            shutil.rmtree(remote["folder"], ignore_errors=True)
        self.interactive.start(volumeNode, segmentationNode, uncertaintyNode, remote.get("params"))
        return {
            "imageId": remote["imageId"],
            "segmentation": segmentationNode,
            "uncertainty": uncertaintyNode,
            "result": remote.get("result", {}),
        }

    def process(self, volumeNode, params, progress=None):
        """Segment ``volumeNode`` with the server's model, synchronously, without GUI.

        Args:
            volumeNode: scalar volume; uploaded first unless it carries an image id.
            params: inference parameters, e.g. ``{"num_inference_steps": 10, "num_ensemble": 5, "seed": 0}``.
            progress: optional ``progress(fraction or None, message)`` callback.

        Returns:
            ``{"imageId", "segmentation", "uncertainty", "result"}`` (see ``importResults``).

        Raises:
            ValueError: a parameter is not allowed by the server.
            ServerError: the server is unreachable or refused the request.
        """
        remote = self.runRemote(progress or _noReport, self.prepareInput(volumeNode), params)
        return self.importResults(volumeNode, remote)

    def refine(self, volumeNode, params=None, progress=None):
        """Refine the current result with the marks added since the last Refine (``InteractiveCorrection.refine``)."""
        return self.interactive.refine(volumeNode, params, progress)

    def undo(self, volumeNode, progress=None):
        """Undo the last Refine of the current result (``InteractiveCorrection.undo``)."""
        return self.interactive.undo(volumeNode, progress=progress)

    # -- review ---------------------------------------------------------------------------------------

    def showUncertainty(self, volumeNode, uncertaintyNode, threshold=None, window=None, opacity=0.5):
        """Uncertainty map as a colour overlay on the volume (see ``display.showUncertainty``)."""
        display.showUncertainty(volumeNode, uncertaintyNode, threshold, window, opacity)

    def mostUncertainSlice(self, uncertaintyNode):
        """``(k, ras)`` of the slice with the most uncertainty."""
        return display.mostUncertainSlice(uncertaintyNode)

    def jumpToMostUncertainSlice(self, uncertaintyNode):
        """Move all slice views to the most uncertain slice; returns ``(k, ras)``."""
        return display.jumpToMostUncertainSlice(uncertaintyNode)

    # -- submission -----------------------------------------------------------------------------------

    def exportLabel(self, segmentationNode, volumeNode):
        """Write the segmentation as a label file on the server image's grid, with its label values. Main thread.

        Returns:
            ``(path, skipped)``: the NIfTI file and names of segments that match no server label.

        Raises:
            ValueError: nothing selected, the volume is not on the server, or no segment matches a label.
        """
        self._requireConnection()
        if segmentationNode is None or volumeNode is None:
            raise ValueError("Select the volume and its segmentation first.")
        imageId = self.imageId(volumeNode)
        if not imageId:
            raise ValueError(f"'{volumeNode.GetName()}' is not on the server: upload it or fetch a sample first.")
        shape, ijkToRas = self.serverGrid(volumeNode)
        array, skipped = exportSegmentsOnGrid(
            segmentationNode, volumeNode, self.serverInfo.labels(self.model), self.serverInfo.colors(self.model),
            shape, ijkToRas,
        )
        skipped = [name for name in skipped if name not in SCRIBBLE_SEGMENTS]  # marks for Refine, not labels
        labelNode = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{imageId} {FINAL_TAG}")
        try:
            slicer.util.updateVolumeFromArray(labelNode, array)
            labelNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
            folder = self._newFolder(imageId)
            path = self.fileIO.writeNode(labelNode, os.path.join(folder, f"{self.imageIdFromName(imageId)}.nii.gz"))
        finally:
            self.scene.RemoveNode(labelNode)
        return path, skipped

    def uploadLabel(self, report, imageId, path, tag=FINAL_TAG):
        """Store a label file in the datastore (``final`` = reviewed), then remove the file. Thread-safe."""
        self._requireConnection()
        report(None, f"Submitting the label of '{imageId}' ({tag}) ...")
        try:
            return self.client.save_label(imageId, path, tag=tag)
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    @staticmethod
    def discard(path):
        """Remove an exported or written file (and its request folder) that will not be sent."""
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)

    def submitLabel(self, segmentationNode, volumeNode, tag=FINAL_TAG):
        """Synchronous ``exportLabel`` + ``uploadLabel``; returns ``(server answer, skipped segment names)``."""
        path, skipped = self.exportLabel(segmentationNode, volumeNode)
        return self.uploadLabel(_noReport, self.imageId(volumeNode), path, tag), skipped

    # -- training -------------------------------------------------------------------------------------

    def startTraining(self, report, params):
        """Start training; returns the previous ``train_stats`` start time (for ``trainingPoller``). Thread-safe."""
        self._requireConnection()
        if not self.trainer:
            raise ServerError("The server has no trainer.")
        maxEpochs = params.get("max_epochs")
        if maxEpochs is not None and (isinstance(maxEpochs, bool) or not isinstance(maxEpochs, int) or maxEpochs < 1):
            raise ValueError(f"max_epochs={maxEpochs!r} must be a whole number >= 1")
        baseline = ((self.client.info().get("train_stats") or {}).get(self.trainer) or {}).get("start_ts")
        report(None, f"Starting training of '{self.trainer}' ...")
        self.client.train_start(self.trainer, params)
        return baseline

    def stopTraining(self, report=None):
        """Stop the running training. Thread-safe."""
        self._requireConnection()
        return self.client.train_stop()

    def trainingPoller(self, callback, baseline=None, interval=2.0):
        """A ``TrainingPoller`` for the current trainer; call ``.start()`` to poll in a thread."""
        self._requireConnection()
        return TrainingPoller(self.client, self.trainer, callback, interval=interval, baseline_start_ts=baseline)
