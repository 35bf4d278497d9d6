"""MedSegDiff: diffusion segmentation with uncertainty from a MONAI Label server, inside 3D Slicer. Module / thin
Widget / Test. The Logic is ``MedSegDiffSceneLib`` (scene and server, no Qt: tested on Slicer's
libraries); ``MedSegDiffLib`` needs no Slicer at all. A ``qt.QTimer`` drives the background work (``BackgroundWork``).
"""

import importlib
import logging
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MedSegDiffLib import (
    KNOWN_RANGES, TIMER_INTERVAL_MS, BackgroundWork, ServerError, TrainingProgress,
    uncertainty_display_range, validate_params,
)
from MedSegDiffLib.controls import (
    applyServerParameters, buttonStates, choiceParams, fillComboBox, serverDefaults, setUncertaintyControls,
)
from MedSegDiffSceneLib import MedSegDiffLogic
from MedSegDiffSceneLib.roundtrip import roundTripProblems, runRoundTrip, serverUrlFromEnvironment
from MedSegDiffWidgetLib import RefineSection, openSegmentEditor

SERVER_URL_SETTING = "MedSegDiff/serverUrl"
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
UI_PARAMETERS = {"numInferenceSteps": "num_inference_steps", "numEnsemble": "num_ensemble", "seed": "seed",
                 "clickRadius": "click_radius", "clickReach": "click_reach", "clickSpread": "click_spread"}  # fmt: skip


class MedSegDiff(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegDiff"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegDiff Label team"]
        self.parent.helpText = (
            "Segment a volume with the MedSegDiff diffusion model of a MONAI Label server, review the ensemble's "
            "uncertainty map, refine it with points and scribbles or correct it in the Segment Editor, submit it as "
            "the final label and retrain the model. See the README of the extension for step-by-step use.")  # fmt: skip
        self.parent.acknowledgementText = "MedSegDiff (Wu et al., MIDL 2023) served with MONAI Label (Project MONAI)."


@parameterNodeWrapper
class MedSegDiffParameterNode:
    """Scene-saved state of the module (the access token is never stored here)."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    uncertainty: vtkMRMLScalarVolumeNode
    serverUrl: str = DEFAULT_SERVER_URL
    numInferenceSteps: Annotated[int, WithinRange(*KNOWN_RANGES["num_inference_steps"])] = 10
    numEnsemble: Annotated[int, WithinRange(*KNOWN_RANGES["num_ensemble"])] = 6
    seed: Annotated[int, WithinRange(*KNOWN_RANGES["seed"])] = 0
    maxEpochs: Annotated[int, WithinRange(1, 100000)] = 10
    clickRadius: Annotated[int, WithinRange(0, 100)] = 2
    clickReach: Annotated[int, WithinRange(0, 100)] = 0
    clickSpread: Annotated[int, WithinRange(0, 100)] = 3
    clickDoubt: bool = True  # click_doubt: the uncertainty overlay flags voxels like the ones a Refine corrected


class MedSegDiffWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: reads the controls, starts Logic calls in background jobs, shows results and errors."""

    TRAINING_POLL_S = 2.0

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = self._trainingProgress = self._timer = None
        self._work = BackgroundWork()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegDiff.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        # Only the uncertainty maps the module loaded: picking the input volume would paint it as a rainbow.
        self.ui.uncertaintySelector.addAttribute("vtkMRMLScalarVolumeNode", MedSegDiffLogic.UNCERTAINTY_ATTRIBUTE, "1")
        self.logic = MedSegDiffLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(TIMER_INTERVAL_MS)
        self._timer.connect("timeout()", self._tick)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for button, slot in (
            ("connectButton", self.onConnect), ("nextSampleButton", self.onNextSample), ("uploadButton", self.onUpload),
            ("runButton", self.onRun), ("jumpToUncertainButton", self.onJumpToUncertain),
            ("editSegmentsButton", self.onEditSegments), ("submitButton", self.onSubmit),
            ("startTrainingButton", self.onStartTraining), ("stopTrainingButton", self.onStopTraining),
        ):  # fmt: skip
            getattr(self.ui, button).connect("clicked(bool)", slot)
        self.ui.serverUrlLineEdit.connect("returnPressed()", self.onConnect)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateGui)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateGui)
        self.ui.uncertaintySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onUncertaintySelected)
        self.ui.uncertaintyWindowWidget.connect("valuesChanged(double,double)", self.onUncertaintyDisplayChanged)
        for slider in (self.ui.uncertaintyThresholdSlider, self.ui.uncertaintyOpacitySlider):
            slider.connect("valueChanged(double)", self.onUncertaintyDisplayChanged)
        self._spinBoxes = {name: getattr(self.ui, f"{field}SpinBox") for field, name in UI_PARAMETERS.items()}
        self._combos = {name: getattr(self.ui, f"{name}ComboBox") for name in ("sampler", "device", "fusion")}
        self._refine = RefineSection(self)  # points, scribbles, Refine and Undo (MedSegDiffWidgetLib)
        self.ui.progressBar.hide()
        self.initializeParameterNode()
        self._updateGui()

    def onReload(self):
        """Developer mode "Reload": Slicer reloads MedSegDiff.py only, so reload its libraries first."""
        for package in ("MedSegDiffLib", "MedSegDiffSceneLib", "MedSegDiffWidgetLib"):  # used ones first
            for name in sorted((n for n in sys.modules if n.split(".")[0] == package), reverse=True):
                importlib.reload(sys.modules[name])  # submodules before their package
        super().onReload()

    def cleanup(self):
        self._stopTrainingMonitor()
        self._timer.stop()
        self.removeObservers()
        self._disconnectParameterNode()
        self.logic.cleanup()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        parameterNode = MedSegDiffParameterNode(self.logic.getParameterNode())
        if not parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and firstVolume.GetAttribute(MedSegDiffLogic.UNCERTAINTY_ATTRIBUTE) is None:
                parameterNode.inputVolume = firstVolume
        savedUrl = qt.QSettings().value(SERVER_URL_SETTING)  # the last URL that connected; one in the scene wins
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
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._applyServerParameters()
        self._updateGui()

    def _applyServerParameters(self):
        if self.logic.serverInfo is not None and self._parameterNode is not None and self.logic.model:
            applyServerParameters(self.logic.serverInfo.parameters(self.logic.model), self._spinBoxes, self._combos)

    def _currentParams(self):
        """Inference parameters from the controls, limited to what the server declares."""
        specs = self.logic.serverInfo.parameters(self.logic.model)
        params = {name: int(getattr(self._parameterNode, f)) for f, name in UI_PARAMETERS.items() if name in specs}
        return {**params, **choiceParams(specs, self._combos)}

    def _updateGui(self, caller=None, event=None):
        if self._parameterNode is None:
            return
        imageId = MedSegDiffLogic.imageId(self._parameterNode.inputVolume)
        self.ui.imageIdLabel.text = imageId or "(not on the server yet)"
        volume = self._parameterNode.inputVolume
        states = buttonStates(
            self.logic.serverInfo, self._work, self.ui.strategyComboBox.count > 0, volume, self._parameterNode.segmentation,
            imageId, self._parameterNode.uncertainty, self.logic.interactive.canUndo(volume),
        )
        for name, enabled in states.items():
            getattr(self.ui, name).enabled = enabled

    def _startJob(self, message, function, onDone, *args, onError=None):
        """Run ``function(report, *args)`` in a thread; ``onDone(result)`` in the main thread; errors shown."""
        if self._work.busy:
            slicer.util.warningDisplay("Another request to the server is still running; wait for it to finish.")
            return
        self._work.start(function, *args, onDone=lambda result: self._jobDone(onDone, result),
                         onError=lambda error: self._showError(error, onError))  # fmt: skip
        self.ui.statusLabel.text = message
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self._updateGui()
        self._timer.start()

    def _tick(self):
        """QTimer: give the worker threads the GIL for a moment (MedSegDiffLib.jobs), then show their state."""
        wasBusy, progress = self._work.busy, self._work.tick()
        if progress is not None:
            fraction, message = progress
            self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
            self.ui.progressBar.value = int(100 * (fraction or 0))
            self.ui.statusLabel.text = message or self.ui.statusLabel.text
        if wasBusy and not self._work.busy:
            self.ui.progressBar.hide()
            self._updateGui()
        if self._trainingProgress is not None:
            self._showTrainingProgress()
        if not self._work.active:
            self._timer.stop()

    def _jobDone(self, onDone, result):
        with slicer.util.tryWithErrorDisplay("MedSegDiff: showing the result failed.", waitCursor=True):
            onDone(result)

    def _showError(self, error, onError=None):
        expected = isinstance(error, (ServerError, ValueError))
        if not expected:
            logging.error("MedSegDiff request failed", exc_info=(type(error), error, error.__traceback__))
        self.ui.statusLabel.text = f"Failed: {error}"
        if onError is not None:
            onError(error)
        slicer.util.errorDisplay(str(error) if expected else f"Unexpected error: {error}", windowTitle="MedSegDiff")

    def onConnect(self):
        url, token = self._parameterNode.serverUrl.strip(), self.ui.tokenLineEdit.text.strip() or None
        self.ui.serverStatusLabel.text = f"Connecting to {url} ..."
        self._startJob(f"Connecting to {url} ...", lambda report: self.logic.connect(url, token), self._onConnected,
                       onError=lambda e: setattr(self.ui.serverStatusLabel, "text", f"Not connected: {e}"))  # fmt: skip

    def _onConnected(self, info):
        qt.QSettings().setValue(SERVER_URL_SETTING, self._parameterNode.serverUrl.strip())
        self.ui.serverStatusLabel.text = info.summary()
        fillComboBox(self.ui.modelComboBox, sorted(info.models), self.logic.model)
        fillComboBox(self.ui.strategyComboBox, info.strategies, info.default_strategy())
        self._onModelSelected()
        self.ui.statusLabel.text = "Connected."

    def onModelChanged(self, name):
        if name and self.logic.serverInfo is not None and name != self.logic.model:
            self.logic.selectModel(name)
            self._onModelSelected()

    def _onModelSelected(self):
        self._applyServerParameters()
        defaults = serverDefaults(self.logic.serverInfo.parameters(self.logic.model))
        for field in [f for f, name in UI_PARAMETERS.items() if name in defaults]:
            setattr(self._parameterNode, field, defaults[UI_PARAMETERS[field]])
        self._updateGui()

    def onNextSample(self):
        strategy = self.ui.strategyComboBox.currentText
        self._startJob(f"Asking the server for the next sample ({strategy}) ...", self.logic.downloadNextSample,
                       self._onSampleDownloaded, strategy)  # fmt: skip

    def _onSampleDownloaded(self, sample):
        if sample is None:
            self.ui.statusLabel.text = "The server has no unlabelled image left for this strategy."
            return slicer.util.infoDisplay(self.ui.statusLabel.text, windowTitle="MedSegDiff")
        volume = self.logic.loadSample(sample)
        slicer.util.setSliceViewerLayers(background=volume, foreground=None, fit=True)
        self._parameterNode.inputVolume = volume
        self.ui.statusLabel.text = f"Loaded '{sample['id']}'."

    def onUpload(self):
        volume = self._parameterNode.inputVolume
        try:
            path = self.logic.writeVolume(volume)
        except Exception as e:
            return self._showError(e)
        imageId = MedSegDiffLogic.imageId(volume) or MedSegDiffLogic.imageIdFromName(volume.GetName())

        def done(serverId):
            self.logic.tagUploaded(volume, serverId)
            self.ui.statusLabel.text = f"Uploaded as '{serverId}'."

        self._startJob("Uploading the volume ...", self.logic.uploadFile, done, path, imageId)

    def onRun(self):
        volume = self._parameterNode.inputVolume
        try:
            params = validate_params(self._currentParams(), self.logic.serverInfo.parameters(self.logic.model))
            prepared = self.logic.prepareInput(volume)
        except Exception as e:
            return self._showError(e)

        def done(remote):
            result = self.logic.importResults(volume, remote)
            self._parameterNode.segmentation = result["segmentation"]
            self._parameterNode.uncertainty = result["uncertainty"]
            self.ui.statusLabel.text = (
                "Done. Review the uncertainty overlay, correct the segments, then submit."
                if result["uncertainty"] else "Done (the server returned no uncertainty map)."
            )  # fmt: skip

        self._startJob("Running MedSegDiff on the server ...", self.logic.runRemote, done, prepared, params)

    def onUncertaintySelected(self, node=None):
        node = self.ui.uncertaintySelector.currentNode()  # the signal may come before the parameter node update
        if node is not None and node.GetImageData() is not None:
            low, high = uncertainty_display_range(slicer.util.arrayFromVolume(node))
            setUncertaintyControls(self.ui.uncertaintyWindowWidget, self.ui.uncertaintyThresholdSlider, low, high)
            self.onUncertaintyDisplayChanged()
        self._updateGui()

    def onUncertaintyDisplayChanged(self, *args):
        node = self.ui.uncertaintySelector.currentNode()
        if node is None or node.GetImageData() is None:
            return
        window = (self.ui.uncertaintyWindowWidget.minimumValue, self.ui.uncertaintyWindowWidget.maximumValue)
        self.logic.showUncertainty(self.ui.inputVolumeSelector.currentNode(), node, self.ui.uncertaintyThresholdSlider.value,
                                   window, self.ui.uncertaintyOpacitySlider.value)  # fmt: skip

    def onJumpToUncertain(self):
        with slicer.util.tryWithErrorDisplay("Jumping to the most uncertain slice failed.", waitCursor=True):
            index, _ = self.logic.jumpToMostUncertainSlice(self._parameterNode.uncertainty)
            self.ui.statusLabel.text = f"Showing slice {index}, the most uncertain one."

    def onEditSegments(self):
        openSegmentEditor(self._parameterNode.segmentation, self._parameterNode.inputVolume)

    def onSubmit(self):
        volume, segmentation = self._parameterNode.inputVolume, self._parameterNode.segmentation
        imageId = MedSegDiffLogic.imageId(volume)
        try:
            path, skipped = self.logic.exportLabel(segmentation, volume)
        except Exception as e:  # shown to the annotator, never a traceback in the console only
            return self._showError(e)
        if skipped and not slicer.util.confirmOkCancelDisplay(
            "These segments have no matching server label and will not be submitted: " + ", ".join(skipped),
            windowTitle="MedSegDiff",
        ):
            self.logic.discard(path)
            return
        done = lambda response: setattr(self.ui.statusLabel, "text", f"Submitted the label of '{imageId}' as final.")
        self._startJob("Submitting the label ...", self.logic.uploadLabel, done, imageId, path)

    def onStartTraining(self):
        params = {"max_epochs": int(self._parameterNode.maxEpochs)}
        self._startJob("Starting training ...", self.logic.startTraining, self._onTrainingStarted, params)

    def _onTrainingStarted(self, baseline):
        self._trainingProgress = TrainingProgress(status="SUBMITTED")
        # The poller thread only stores the progress; the timer shows it in the main thread.
        self._work.watch(self.logic.trainingPoller(lambda p: setattr(self, "_trainingProgress", p), baseline,
                                                   self.TRAINING_POLL_S))  # fmt: skip
        self._timer.start()
        self.ui.trainingStatusLabel.text = "Training submitted."
        self._updateGui()

    def _showTrainingProgress(self):
        progress = self._trainingProgress
        self.ui.trainingProgressBar.value = int(100 * progress.fraction)
        self.ui.trainingDiceLabel.text = "-" if progress.dice is None else f"{progress.dice:.3f}"
        self.ui.trainingStatusLabel.text = progress.summary()
        if self._work.poller is None or progress.finished:
            self._stopTrainingMonitor()
            self._updateGui()

    def _stopTrainingMonitor(self):
        if self._work.poller is not None:
            self._work.poller.stop_event.set()
        self._work.poller = self._trainingProgress = None

    def onStopTraining(self):
        self._startJob("Stopping training ...", self.logic.stopTraining, lambda task: None)


class MedSegDiffTest(ScriptedLoadableModuleTest):
    """The annotator's round trip (``MedSegDiffSceneLib.roundtrip``) against the server at ``MEDSEGDIFF_SERVER_URL``."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        url, skipped = serverUrlFromEnvironment()
        if skipped:  # "Reload and Test" calls runTest directly: a skip is no failure there
            logging.warning(skipped)
            return self.delayDisplay(skipped)
        self.test_MedSegDiffRoundTrip()

    def test_MedSegDiffRoundTrip(self):
        url, skipped = serverUrlFromEnvironment()
        if skipped:
            self.skipTest(skipped)
        logic = MedSegDiffLogic()
        try:
            run = runRoundTrip(logic, url, report=self.delayDisplay)
        finally:
            logic.cleanup()
        self.assertEqual(roundTripProblems(run), [])
        self.delayDisplay("MedSegDiff round trip passed")
