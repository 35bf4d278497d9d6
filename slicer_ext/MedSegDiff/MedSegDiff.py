"""MedSegDiff: diffusion segmentation with uncertainty from a MONAI Label server, inside 3D Slicer.

Module / thin Widget / Logic / Test. Everything that does not need Slicer (HTTP client, parameter
validation, file conversions, training polling, background jobs) lives in ``MedSegDiffLib`` and is tested
outside Slicer. The Logic works without the widget and never opens dialogs; the widget runs every server
call in a background thread and polls it with a ``qt.QTimer``, so the user interface never freezes.
"""

import importlib
import logging
import os
import re
import sys

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSegDiffLib import (
    BackgroundJob,
    MedSegDiffClient,
    ServerError,
    ServerInfo,
    TrainingPoller,
    TrainingProgress,
    most_uncertain_slice,
    remap_labels,
    uncertainty_display_range,
    validate_params,
    write_label_as_seg_nrrd,
)

IMAGE_ID_ATTRIBUTE = "MedSegDiff.ImageId"
UNCERTAINTY_TAG = "uncertainty"
FINAL_TAG = "final"
SERVER_URL_SETTING = "MedSegDiff/serverUrl"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_ENV = "MEDSEGDIFF_SERVER_URL"
TEST_IMAGE_ENV = "MEDSEGDIFF_TEST_IMAGE_ID"
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRainbow")
REQUIRED_PACKAGES = {"slicerio": "slicerio", "nrrd": "pynrrd"}  # import name -> pip name

# Parameter node field <-> server parameter name
UI_PARAMETERS = {
    "numInferenceSteps": "num_inference_steps",
    "numEnsemble": "num_ensemble",
    "seed": "seed",
}


#
# MedSegDiff
#


class MedSegDiff(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegDiff"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegDiff Label team"]
        self.parent.helpText = (
            "Segment a volume with the MedSegDiff diffusion model running on a MONAI Label server, review the "
            "uncertainty map of the diffusion ensemble, correct the result in the Segment Editor, submit it as "
            "the final label and retrain the model. See the README of the extension for step-by-step use."
        )
        self.parent.acknowledgementText = (
            "MedSegDiff (Wu et al., MIDL 2023) served with MONAI Label (Project MONAI). "
            "Module layout follows the 3D Slicer scripted module template."
        )


#
# Parameter node
#


@parameterNodeWrapper
class MedSegDiffParameterNode:
    """Scene-saved state of the module (the access token is never stored here)."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    uncertainty: vtkMRMLScalarVolumeNode
    serverUrl: str = DEFAULT_SERVER_URL
    numInferenceSteps: int = 10
    numEnsemble: int = 5
    seed: int = 0
    maxEpochs: int = 10


#
# MedSegDiffWidget
#


class MedSegDiffWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: reads the controls, starts Logic calls in background jobs, shows results and errors."""

    JOB_POLL_MS = 200
    TRAINING_POLL_S = 2.0

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobDone = None
        self._jobError = None
        self._jobTimer = None
        self._trainingPoller = None
        self._trainingTimer = None
        self._trainingProgress = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegDiff.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegDiffLogic()

        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(self.JOB_POLL_MS)
        self._jobTimer.connect("timeout()", self._pollJob)
        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(int(self.TRAINING_POLL_S * 1000))
        self._trainingTimer.connect("timeout()", self._showTrainingProgress)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverUrlLineEdit.connect("returnPressed()", self.onConnect)
        self.ui.nextSampleButton.connect("clicked(bool)", self.onNextSample)
        self.ui.uploadButton.connect("clicked(bool)", self.onUpload)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.jumpToUncertainButton.connect("clicked(bool)", self.onJumpToUncertain)
        self.ui.editSegmentsButton.connect("clicked(bool)", self.onEditSegments)
        self.ui.submitButton.connect("clicked(bool)", self.onSubmit)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateGui)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateGui)
        self.ui.uncertaintySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onUncertaintySelected)
        self.ui.uncertaintyWindowWidget.connect("valuesChanged(double,double)", self.onUncertaintyDisplayChanged)
        self.ui.uncertaintyThresholdSlider.connect("valueChanged(double)", self.onUncertaintyDisplayChanged)
        self.ui.uncertaintyOpacitySlider.connect("valueChanged(double)", self.onUncertaintyDisplayChanged)

        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self._updateGui()

    def onReload(self):
        """Developer mode "Reload": Slicer reloads MedSegDiff.py only, so reload MedSegDiffLib first."""
        for name in ("client", "params", "conversions", "jobs", "serverinfo", "training"):
            module = sys.modules.get(f"MedSegDiffLib.{name}")
            if module is not None:
                importlib.reload(module)
        if "MedSegDiffLib" in sys.modules:
            importlib.reload(sys.modules["MedSegDiffLib"])
        super().onReload()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        self._stopTrainingMonitor()
        if self._jobTimer:
            self._jobTimer.stop()
        self.removeObservers()
        self._disconnectParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node -------------------------------------------------------------------------------

    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and firstVolume.GetAttribute(MedSegDiffLogic.UNCERTAINTY_ATTRIBUTE) is None:
                parameterNode.inputVolume = firstVolume
        # The last URL that connected is remembered across sessions; a URL saved in the scene wins.
        savedUrl = qt.QSettings().value(SERVER_URL_SETTING)
        if savedUrl and parameterNode.serverUrl == DEFAULT_SERVER_URL:
            parameterNode.serverUrl = str(savedUrl)
        self.setParameterNode(parameterNode)

    def _disconnectParameterNode(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def setParameterNode(self, parameterNode):
        self._disconnectParameterNode()
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            # connectGui resets spin box ranges: apply the server's ranges afterwards.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._applyServerParameters()
        self._updateGui()

    # -- GUI state ------------------------------------------------------------------------------------

    def _updateGui(self, caller=None, event=None):
        if self._parameterNode is None:
            return
        busy = self._job is not None
        connected = self.logic.serverInfo is not None
        volume = self._parameterNode.inputVolume
        imageId = MedSegDiffLogic.imageId(volume) if volume else None
        self.ui.imageIdLabel.text = imageId or "(not on the server yet)"
        self.ui.connectButton.enabled = not busy
        self.ui.nextSampleButton.enabled = connected and not busy and self.ui.strategyComboBox.count > 0
        self.ui.uploadButton.enabled = connected and not busy and volume is not None
        self.ui.runButton.enabled = connected and not busy and volume is not None
        segmentation = self._parameterNode.segmentation
        self.ui.editSegmentsButton.enabled = segmentation is not None
        self.ui.submitButton.enabled = connected and not busy and segmentation is not None and imageId is not None
        self.ui.jumpToUncertainButton.enabled = self._parameterNode.uncertainty is not None
        training = self._trainingPoller is not None
        self.ui.startTrainingButton.enabled = connected and not busy and not training and bool(
            self.logic.serverInfo and self.logic.serverInfo.trainers
        )
        self.ui.stopTrainingButton.enabled = connected and not busy

    def _applyServerParameters(self):
        """Spin box ranges/defaults and combo box choices from the server's declared parameters."""
        info = self.logic.serverInfo
        if info is None or self._parameterNode is None or not self.logic.model:
            return
        specs = info.parameters(self.logic.model)
        spinBoxes = {
            "num_inference_steps": self.ui.numInferenceStepsSpinBox,
            "num_ensemble": self.ui.numEnsembleSpinBox,
            "seed": self.ui.seedSpinBox,
        }
        for name, spinBox in spinBoxes.items():
            spec = specs.get(name)
            spinBox.enabled = spec is not None
            if spec is None:
                continue
            if spec.help:
                spinBox.toolTip = f"{name}: {spec.help}"
            if spec.minimum is not None:
                spinBox.minimum = int(spec.minimum)
            if spec.maximum is not None:
                spinBox.maximum = int(spec.maximum)
        for name, comboBox in self._choiceComboBoxes().items():
            spec = specs.get(name)
            current = comboBox.currentText
            comboBox.clear()
            comboBox.enabled = spec is not None and spec.kind == "choice"
            if comboBox.enabled:
                if spec.help:
                    comboBox.toolTip = f"{name}: {spec.help}"
                for choice in spec.choices:
                    comboBox.addItem(str(choice))
                index = comboBox.findText(current)
                if index < 0:
                    index = comboBox.findText(str(spec.default))
                comboBox.currentIndex = max(index, 0)

    def _choiceComboBoxes(self):
        """Server parameters with a list of choices and the combo box that shows them."""
        return {"sampler": self.ui.samplerComboBox, "device": self.ui.deviceComboBox, "fusion": self.ui.fusionComboBox}

    def _resetParametersToServerDefaults(self):
        specs = self.logic.serverInfo.parameters(self.logic.model)
        for field, name in UI_PARAMETERS.items():
            if name in specs and isinstance(specs[name].default, int):
                setattr(self._parameterNode, field, int(specs[name].default))

    def _currentParams(self):
        """Inference parameters from the controls, limited to what the server declares."""
        specs = self.logic.serverInfo.parameters(self.logic.model)
        params = {}
        for field, name in UI_PARAMETERS.items():
            if name in specs:
                params[name] = int(getattr(self._parameterNode, field))
        for name, comboBox in self._choiceComboBoxes().items():
            if name in specs and comboBox.currentText:
                params[name] = comboBox.currentText
        return params

    # -- background jobs ------------------------------------------------------------------------------

    def _startJob(self, message, function, onDone, *args, onError=None):
        """Run ``function(report, *args)`` in a thread; call ``onDone(result)`` in the main thread.

        Errors are shown in a message box and the status line, and passed to ``onError`` when given.
        """
        if self._job is not None:
            slicer.util.warningDisplay("Another request to the server is still running; wait for it to finish.")
            return
        self._job = BackgroundJob(function, *args).start()
        self._jobDone = onDone
        self._jobError = onError
        self.ui.statusLabel.text = message
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self._updateGui()
        self._jobTimer.start()

    def _pollJob(self):
        job = self._job
        if job is None:
            self._jobTimer.stop()
            return
        fraction, message = job.progress
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(100 * fraction)
        if message:
            self.ui.statusLabel.text = message
        if not job.done:
            return
        self._jobTimer.stop()
        onDone, onError = self._jobDone, self._jobError
        self._job = self._jobDone = self._jobError = None
        self.ui.progressBar.hide()
        try:
            result = job.result()
        except Exception as e:
            expected = isinstance(e, (ServerError, ValueError))
            if not expected:
                logging.exception("MedSegDiff request failed")
            self.ui.statusLabel.text = f"Failed: {e}"
            if onError is not None:
                onError(e)
            slicer.util.errorDisplay(str(e) if expected else f"Unexpected error: {e}", windowTitle="MedSegDiff")
        else:
            with slicer.util.tryWithErrorDisplay("MedSegDiff: showing the result failed.", waitCursor=True):
                onDone(result)
        finally:
            self._updateGui()

    # -- server ---------------------------------------------------------------------------------------

    def onConnect(self):
        url = self._parameterNode.serverUrl.strip()
        token = self.ui.tokenLineEdit.text.strip() or None
        missing = MedSegDiffLogic.missingPythonPackages()
        if missing and slicer.util.confirmOkCancelDisplay(
            f"MedSegDiff needs the Python packages {', '.join(missing)}. Install them now?",
            windowTitle="MedSegDiff",
        ):
            with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
                self.logic.installPythonPackages()
        self.ui.serverStatusLabel.text = f"Connecting to {url} ..."
        self._startJob(
            f"Connecting to {url} ...",
            lambda report: self.logic.connect(url, token),
            self._onConnected,
            onError=self._onConnectFailed,
        )

    def _onConnectFailed(self, error):
        self.ui.serverStatusLabel.text = f"Not connected: {error}"

    def _onConnected(self, info):
        qt.QSettings().setValue(SERVER_URL_SETTING, self._parameterNode.serverUrl.strip())
        self.ui.serverStatusLabel.text = info.summary()
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for name in sorted(info.models):
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.currentIndex = max(0, self.ui.modelComboBox.findText(self.logic.model or ""))
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self.ui.strategyComboBox.clear()
        for name in info.strategies:
            self.ui.strategyComboBox.addItem(name)
        self.ui.strategyComboBox.currentIndex = max(0, self.ui.strategyComboBox.findText(info.default_strategy() or ""))
        self._applyServerParameters()
        self._resetParametersToServerDefaults()
        self.ui.statusLabel.text = "Connected."

    def onModelChanged(self, name):
        if not name or self.logic.serverInfo is None or name == self.logic.model:
            return
        self.logic.selectModel(name)
        self._applyServerParameters()
        self._resetParametersToServerDefaults()
        self._updateGui()

    # -- image ----------------------------------------------------------------------------------------

    def onNextSample(self):
        strategy = self.ui.strategyComboBox.currentText
        self._startJob(
            f"Asking the server for the next sample ({strategy}) ...",
            self.logic.downloadNextSample,
            self._onSampleDownloaded,
            strategy,
        )

    def _onSampleDownloaded(self, sample):
        if sample is None:
            self.ui.statusLabel.text = "The server has no unlabelled image left for this strategy."
            slicer.util.infoDisplay(self.ui.statusLabel.text, windowTitle="MedSegDiff")
            return
        volume = self.logic.loadSample(sample)
        self._parameterNode.inputVolume = volume
        self.ui.statusLabel.text = f"Loaded '{sample['id']}'."

    def onUpload(self):
        volume = self._parameterNode.inputVolume
        try:
            path = self.logic.writeVolume(volume)
        except Exception as e:
            slicer.util.errorDisplay(f"Writing the volume for upload failed: {e}", windowTitle="MedSegDiff")
            return
        imageId = MedSegDiffLogic.imageId(volume) or MedSegDiffLogic.imageIdFromName(volume.GetName())

        def done(serverId):
            volume.SetAttribute(IMAGE_ID_ATTRIBUTE, serverId)
            self.ui.statusLabel.text = f"Uploaded as '{serverId}'."
            self._updateGui()

        self._startJob("Uploading the volume ...", self.logic.uploadFile, done, path, imageId)

    # -- segmentation ---------------------------------------------------------------------------------

    def onRun(self):
        volume = self._parameterNode.inputVolume
        try:
            params = validate_params(self._currentParams(), self.logic.serverInfo.parameters(self.logic.model))
            prepared = self.logic.prepareInput(volume)
        except Exception as e:
            slicer.util.errorDisplay(str(e), windowTitle="MedSegDiff")
            return

        def done(remote):
            result = self.logic.importResults(volume, remote)
            self._parameterNode.segmentation = result["segmentation"]
            self._parameterNode.uncertainty = result["uncertainty"]
            self.ui.statusLabel.text = (
                "Done. Review the uncertainty overlay, correct the segments, then submit."
                if result["uncertainty"]
                else "Done (the server returned no uncertainty map)."
            )

        self._startJob("Running MedSegDiff on the server ...", self.logic.runRemote, done, prepared, params)

    # -- review ---------------------------------------------------------------------------------------

    def onUncertaintySelected(self, node=None):
        # The signal may arrive before the parameter node is updated: use the selector's node.
        node = self.ui.uncertaintySelector.currentNode()
        if node is None or node.GetImageData() is None:
            self._updateGui()
            return
        low, high = uncertainty_display_range(slicer.util.arrayFromVolume(node))
        widgets = (self.ui.uncertaintyWindowWidget, self.ui.uncertaintyThresholdSlider)
        blocked = [w.blockSignals(True) for w in widgets]
        try:
            self.ui.uncertaintyWindowWidget.setRange(low, high)
            self.ui.uncertaintyWindowWidget.setValues(low, high)
            self.ui.uncertaintyThresholdSlider.minimum = low
            self.ui.uncertaintyThresholdSlider.maximum = high
            self.ui.uncertaintyThresholdSlider.value = low + 0.1 * (high - low)
        finally:
            for w, b in zip(widgets, blocked):
                w.blockSignals(b)
        self.onUncertaintyDisplayChanged()
        self._updateGui()

    def onUncertaintyDisplayChanged(self, *args):
        node = self.ui.uncertaintySelector.currentNode()
        if node is None or node.GetImageData() is None:
            return
        self.logic.showUncertainty(
            self.ui.inputVolumeSelector.currentNode(),
            node,
            threshold=self.ui.uncertaintyThresholdSlider.value,
            window=(self.ui.uncertaintyWindowWidget.minimumValue, self.ui.uncertaintyWindowWidget.maximumValue),
            opacity=self.ui.uncertaintyOpacitySlider.value,
        )

    def onJumpToUncertain(self):
        with slicer.util.tryWithErrorDisplay("Jumping to the most uncertain slice failed.", waitCursor=True):
            index, _ = self.logic.jumpToMostUncertainSlice(self._parameterNode.uncertainty)
            self.ui.statusLabel.text = f"Showing slice {index}, the most uncertain one."

    def onEditSegments(self):
        segmentation = self._parameterNode.segmentation
        volume = self._parameterNode.inputVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        if volume is not None:
            # Slicer >= 5.4 names it "source volume", earlier 5.x "master volume".
            setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
            setSource(volume)

    def onSubmit(self):
        volume = self._parameterNode.inputVolume
        segmentation = self._parameterNode.segmentation
        imageId = MedSegDiffLogic.imageId(volume)
        try:
            path, skipped = self.logic.exportLabel(segmentation, volume)
        except ValueError as e:
            slicer.util.errorDisplay(str(e), windowTitle="MedSegDiff")
            return
        if skipped and not slicer.util.confirmOkCancelDisplay(
            "These segments have no matching server label and will not be submitted: " + ", ".join(skipped),
            windowTitle="MedSegDiff",
        ):
            return

        def done(response):
            self.ui.statusLabel.text = f"Submitted the label of '{imageId}' as final."

        self._startJob("Submitting the label ...", self.logic.uploadLabel, done, imageId, path)

    # -- training -------------------------------------------------------------------------------------

    def onStartTraining(self):
        params = {"max_epochs": int(self._parameterNode.maxEpochs)}
        self._startJob("Starting training ...", self.logic.startTraining, self._onTrainingStarted, params)

    def _onTrainingStarted(self, baseline):
        self._trainingProgress = TrainingProgress(status="SUBMITTED")
        self._trainingPoller = self.logic.trainingPoller(self._storeTrainingProgress, baseline, self.TRAINING_POLL_S)
        self._trainingPoller.start()
        self._trainingTimer.start()
        self.ui.trainingStatusLabel.text = "Training submitted."
        self._updateGui()

    def _storeTrainingProgress(self, progress):
        # Runs in the poller thread: only store; the timer shows it in the main thread.
        self._trainingProgress = progress

    def _showTrainingProgress(self):
        progress = self._trainingProgress
        if progress is None:
            return
        self.ui.trainingProgressBar.value = int(100 * progress.fraction)
        epochs = f"{progress.epoch}/{progress.total_epochs}" if progress.total_epochs else f"{progress.epoch}"
        self.ui.trainingDiceLabel.text = "-" if progress.dice is None else f"{progress.dice:.3f}"
        text = progress.error or f"{progress.status}, epoch {epochs}"
        if progress.best_dice is not None:
            text += f", best Dice {progress.best_dice:.3f}"
        self.ui.trainingStatusLabel.text = text
        if progress.finished:
            self._stopTrainingMonitor()
            self._updateGui()

    def _stopTrainingMonitor(self):
        if self._trainingPoller is not None:
            self._trainingPoller.stop_event.set()
            self._trainingPoller = None
        if self._trainingTimer is not None:
            self._trainingTimer.stop()

    def onStopTraining(self):
        self._startJob("Stopping training ...", self.logic.stopTraining, lambda task: None)


#
# MedSegDiffLogic
#


class MedSegDiffLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from scripts and tests without the widget; never opens dialogs.

    Methods taking ``report`` as first argument only talk to the server and write temporary files: they
    are safe to run in a background thread. The others touch the MRML scene and must run in the main thread.
    ``process`` chains them for synchronous use.
    """

    UNCERTAINTY_ATTRIBUTE = "MedSegDiff.Uncertainty"

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.serverInfo = None
        self.model = None
        self.trainer = None
        # Created here, in the main thread: slicer.util.tempDirectory must not run in a worker thread.
        self.tempDir = slicer.util.tempDirectory("MedSegDiff")

    def getParameterNode(self):
        return MedSegDiffParameterNode(super().getParameterNode())

    # -- dependencies ---------------------------------------------------------------------------------

    @staticmethod
    def missingPythonPackages():
        """pip names of the packages MedSegDiffLib needs that are not installed."""
        import importlib.util

        return [pip for module, pip in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]

    def installPythonPackages(self):
        """Install missing packages into Slicer's Python (``slicer.util.pip_install``)."""
        missing = self.missingPythonPackages()
        if missing:
            slicer.util.pip_install(" ".join(missing))

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
        folder = os.path.join(self.tempDir, self.imageIdFromName(sample["id"]))
        return {"id": sample["id"], "path": self.client.download_image(sample["id"], folder)}

    def loadSample(self, sample):
        """Load a downloaded sample as a volume node tagged with its image id. Main thread."""
        volumeNode = slicer.util.loadVolume(sample["path"], {"name": sample["id"]})
        volumeNode.SetAttribute(IMAGE_ID_ATTRIBUTE, sample["id"])
        return volumeNode

    def fetchNextSample(self, strategy=None):
        """Synchronous ``downloadNextSample`` + ``loadSample``; returns the volume node or None."""
        sample = self.downloadNextSample(_noReport, strategy)
        return self.loadSample(sample) if sample else None

    def writeVolume(self, volumeNode):
        """Write the volume to a temporary NIfTI file for upload (scene storage is left alone). Main thread."""
        path = os.path.join(self.tempDir, self.imageIdFromName(volumeNode.GetName()) + ".nii.gz")
        if hasattr(slicer.util, "exportNode"):
            slicer.util.exportNode(volumeNode, path)
        elif not slicer.util.saveNode(volumeNode, path):
            raise RuntimeError(f"Could not write '{volumeNode.GetName()}' to {path}")
        return path

    def uploadFile(self, report, path, imageId):
        """Upload an image file to the datastore; returns the id the server kept. Thread-safe."""
        self._requireConnection()
        report(None, f"Uploading {os.path.basename(path)} ...")
        return self.client.upload_image(path, imageId)

    def uploadVolume(self, volumeNode, imageId=None):
        """Synchronous upload of a volume node; tags the node with its image id and returns it."""
        imageId = imageId or self.imageId(volumeNode) or self.imageIdFromName(volumeNode.GetName())
        serverId = self.uploadFile(_noReport, self.writeVolume(volumeNode), imageId)
        volumeNode.SetAttribute(IMAGE_ID_ATTRIBUTE, serverId)
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

    def runRemote(self, report, prepared, params):
        """Server part of inference. Thread-safe: no MRML access.

        Validates ``params``, uploads the volume if needed, runs the model, downloads the uncertainty map
        and converts the label into a ``.seg.nrrd`` with the server's segment names and colours.
        """
        self._requireConnection()
        params = validate_params(params, self.serverInfo.parameters(self.model))
        imageId = prepared["imageId"]
        if prepared.get("uploadPath"):
            report(0.05, "Uploading the volume ...")
            imageId = self.client.upload_image(prepared["uploadPath"], imageId)
        report(None, f"Running {self.model} on '{imageId}' ({params}) ...")
        folder = os.path.join(self.tempDir, self.imageIdFromName(imageId))
        infer = self.client.infer(self.model, imageId, params, dest_dir=folder)
        report(0.8, "Downloading the uncertainty map ...")
        warnings = []
        try:
            uncertaintyPath = self.client.download_label(imageId, UNCERTAINTY_TAG, dest_dir=folder)
        except ServerError as e:
            if e.status != 404:
                raise
            warnings.append(f"no uncertainty map for '{imageId}': {e}")  # logged by importResults
            uncertaintyPath = None
        report(0.9, "Converting the result ...")
        segPath = os.path.join(folder, f"{self.imageIdFromName(imageId)}_{self.model}.seg.nrrd")
        write_label_as_seg_nrrd(
            infer.label_path, segPath, self.serverInfo.labels(self.model), self.serverInfo.colors(self.model)
        )
        report(1.0, "Done.")
        return {
            "imageId": imageId,
            "labelPath": infer.label_path,
            "segmentationPath": segPath,
            "uncertaintyPath": uncertaintyPath,
            "result": infer.result,
            "warnings": warnings,
        }

    def importResults(self, volumeNode, remote):
        """Main-thread part after inference: segmentation node and uncertainty overlay.

        Returns:
            ``{"imageId", "segmentation", "uncertainty" (or None), "result"}``.
        """
        for warning in remote.get("warnings", []):
            logging.warning(f"MedSegDiff: {warning}")
        volumeNode.SetAttribute(IMAGE_ID_ATTRIBUTE, remote["imageId"])
        name = f"{volumeNode.GetName()} {self.model}"
        segmentationNode = slicer.util.loadSegmentation(remote["segmentationPath"], {"name": name})
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentationNode.SetNodeReferenceID(segmentationNode.GetReferenceImageGeometryReferenceRole(), volumeNode.GetID())
        uncertaintyNode = None
        if remote.get("uncertaintyPath"):
            uncertaintyNode = slicer.util.loadVolume(
                remote["uncertaintyPath"], {"name": f"{name} uncertainty", "show": False}
            )
            uncertaintyNode.SetAttribute(self.UNCERTAINTY_ATTRIBUTE, "1")
            self.showUncertainty(volumeNode, uncertaintyNode)
        else:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=None)
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
        report = progress or _noReport
        if self.missingPythonPackages():
            report(None, "Installing Python packages ...")
            self.installPythonPackages()
        prepared = self.prepareInput(volumeNode)
        remote = self.runRemote(report, prepared, params)
        return self.importResults(volumeNode, remote)

    # -- review ---------------------------------------------------------------------------------------

    def showUncertainty(self, volumeNode, uncertaintyNode, threshold=None, window=None, opacity=0.5):
        """Show the uncertainty map as a colour overlay on the volume in the slice views.

        Args:
            volumeNode: background volume.
            uncertaintyNode: the uncertainty volume.
            threshold: values below it are transparent (None: no threshold).
            window: ``(low, high)`` colour range; robust default from the data when None.
            opacity: foreground opacity 0-1.
        """
        uncertaintyNode.CreateDefaultDisplayNodes()
        displayNode = uncertaintyNode.GetDisplayNode()
        for colorNodeId in UNCERTAINTY_COLOR_NODE_IDS:
            if slicer.mrmlScene.GetNodeByID(colorNodeId):
                displayNode.SetAndObserveColorNodeID(colorNodeId)
                break
        low, high = window or uncertainty_display_range(slicer.util.arrayFromVolume(uncertaintyNode))
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(low, high)
        if threshold is None:
            displayNode.ApplyThresholdOff()
        else:
            displayNode.AutoThresholdOff()
            displayNode.SetLowerThreshold(threshold)
            displayNode.SetUpperThreshold(max(high, float(slicer.util.arrayFromVolume(uncertaintyNode).max())))
            displayNode.ApplyThresholdOn()
        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=uncertaintyNode, foregroundOpacity=opacity)

    def mostUncertainSlice(self, uncertaintyNode):
        """``(k, ras)``: slice index (volume's K axis) with the most uncertainty and the RAS of its centre."""
        array = slicer.util.arrayFromVolume(uncertaintyNode)
        k = most_uncertain_slice(array, axis=0)
        ijkToRas = vtk.vtkMatrix4x4()
        uncertaintyNode.GetIJKToRASMatrix(ijkToRas)
        center = [(array.shape[2] - 1) / 2.0, (array.shape[1] - 1) / 2.0, float(k), 1.0]
        return k, list(ijkToRas.MultiplyPoint(center)[:3])

    def jumpToMostUncertainSlice(self, uncertaintyNode):
        """Move all slice views to the most uncertain slice; returns ``(k, ras)``."""
        if uncertaintyNode is None:
            raise ValueError("No uncertainty map: run MedSegDiff first.")
        k, ras = self.mostUncertainSlice(uncertaintyNode)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, ras[0], ras[1], ras[2])
        return k, ras

    # -- submission -----------------------------------------------------------------------------------

    def exportLabel(self, segmentationNode, volumeNode):
        """Write the segmentation as a label file on the volume's grid with the server's label values. Main thread.

        Returns:
            ``(path, skipped)``: the NIfTI file and names of segments that match no server label.
        """
        self._requireConnection()
        if segmentationNode is None or volumeNode is None:
            raise ValueError("Select the volume and its segmentation first.")
        imageId = self.imageId(volumeNode)
        if not imageId:
            raise ValueError(f"'{volumeNode.GetName()}' is not on the server: upload it or fetch a sample first.")
        labels = self.serverInfo.labels(self.model)
        segmentation = segmentationNode.GetSegmentation()
        segmentIds, mapping, skipped = vtk.vtkStringArray(), {}, []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segmentId).GetName()
            if name in labels:
                segmentIds.InsertNextValue(segmentId)
                mapping[segmentIds.GetNumberOfValues()] = labels[name]  # exported value -> server value
            else:
                skipped.append(name)
        if not mapping:
            raise ValueError(f"No segment is named like a server label ({', '.join(labels)}).")
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{imageId} final")
        try:
            # Reference-geometry extent: the label has exactly the volume's grid (the default crops to the segments).
            exported = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelNode, volumeNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            )
            if not exported:
                raise RuntimeError("Exporting the segments to a labelmap failed.")
            remapped = remap_labels(slicer.util.arrayFromVolume(labelNode), mapping)
            slicer.util.updateVolumeFromArray(labelNode, remapped)
            path = os.path.join(self.tempDir, f"{self.imageIdFromName(imageId)}_{FINAL_TAG}.nii.gz")
            if hasattr(slicer.util, "exportNode"):
                slicer.util.exportNode(labelNode, path)
            elif not slicer.util.saveNode(labelNode, path):
                raise RuntimeError(f"Could not write the label to {path}")
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        return path, skipped

    def uploadLabel(self, report, imageId, path, tag=FINAL_TAG):
        """Store a label file in the datastore (``final`` = reviewed). Thread-safe."""
        self._requireConnection()
        report(None, f"Submitting the label of '{imageId}' ({tag}) ...")
        return self.client.save_label(imageId, path, tag=tag)

    def submitLabel(self, segmentationNode, volumeNode, tag=FINAL_TAG):
        """Synchronous ``exportLabel`` + ``uploadLabel``; returns the server's answer."""
        path, _ = self.exportLabel(segmentationNode, volumeNode)
        return self.uploadLabel(_noReport, self.imageId(volumeNode), path, tag)

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


def _noReport(fraction=None, message=""):
    logging.debug(f"MedSegDiff: {message}")


#
# MedSegDiffTest
#


class MedSegDiffTest(ScriptedLoadableModuleTest):
    """Round trip against a real MONAI Label server running the MedSegDiff app.

    Set ``MEDSEGDIFF_SERVER_URL`` (e.g. http://127.0.0.1:8000); without it the test is skipped with a
    message. ``MEDSEGDIFF_TEST_IMAGE_ID`` picks a datastore image when the strategy has none left.
    """

    SKIP_MESSAGE = (
        f"{SERVER_URL_ENV} is not set: skipping the MedSegDiff round trip. Start the MONAI Label server and "
        f"set {SERVER_URL_ENV}=http://127.0.0.1:8000 before starting Slicer."
    )

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        if not os.environ.get(SERVER_URL_ENV):
            # "Reload and Test" runs this directly; a skip is not a failure there.
            logging.warning(self.SKIP_MESSAGE)
            self.delayDisplay(self.SKIP_MESSAGE)
            return
        self.setUp()
        self.test_MedSegDiffRoundTrip()

    def test_MedSegDiffRoundTrip(self):
        url = os.environ.get(SERVER_URL_ENV)
        if not url:
            self.skipTest(self.SKIP_MESSAGE)
        logic = MedSegDiffLogic()

        self.delayDisplay(f"Connecting to {url}")
        info = logic.connect(url)
        self.assertIn("medsegdiff", info.models)
        labels = info.labels(logic.model)
        self.assertTrue(labels, "the model declares no labels")

        self.delayDisplay("Loading a sample volume from the server")
        volumeNode = logic.fetchNextSample(info.default_strategy())
        if volumeNode is None:
            imageId = os.environ.get(TEST_IMAGE_ENV, "robex_head")
            path = logic.client.download_image(imageId, logic.tempDir)
            volumeNode = logic.loadSample({"id": imageId, "path": path})
        self.assertIsNotNone(MedSegDiffLogic.imageId(volumeNode))

        self.delayDisplay("Running MedSegDiff")
        messages = []
        result = logic.process(
            volumeNode,
            {"num_inference_steps": 2, "num_ensemble": 2, "seed": 0},
            progress=lambda fraction, message: messages.append(message),
        )
        self.assertTrue(messages)
        segmentationNode = result["segmentation"]
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(labels))
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(sorted(names), sorted(labels))
        uncertaintyNode = result["uncertainty"]
        self.assertIsNotNone(uncertaintyNode, "the server stored no uncertainty map")
        self.assertEqual(
            slicer.util.arrayFromVolume(uncertaintyNode).shape, slicer.util.arrayFromVolume(volumeNode).shape
        )
        k, _ = logic.jumpToMostUncertainSlice(uncertaintyNode)
        self.assertTrue(0 <= k < slicer.util.arrayFromVolume(volumeNode).shape[0])

        self.delayDisplay("Submitting the label as final")
        response = logic.submitLabel(segmentationNode, volumeNode)
        self.assertEqual(response.get("image"), MedSegDiffLogic.imageId(volumeNode))
        finalPath = logic.client.download_label(MedSegDiffLogic.imageId(volumeNode), FINAL_TAG, logic.tempDir)
        self.assertTrue(os.path.getsize(finalPath) > 0)
        self.delayDisplay("MedSegDiff round trip passed")
