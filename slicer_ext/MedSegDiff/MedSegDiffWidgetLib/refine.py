"""The "Refine with clicks and scribbles" section of the module: its buttons, run like the widget's other work.

Point placement, scribble segments, Refine and Undo are ``MedSegDiffSceneLib.interactive`` calls (tested on
slicer-core against the real server); this file only wires them to the buttons and the background job.
"""

import slicer

__all__ = ["RefineSection", "openSegmentEditor"]


def openSegmentEditor(segmentationNode, volumeNode, segmentId=None):
    """Show the Segment Editor on the segmentation with the volume as its source (and ``segmentId`` selected)."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.SegmentEditorWidget.editor
    editor.setSegmentationNode(segmentationNode)
    if volumeNode is not None:
        # Slicer >= 5.4 names it "source volume", earlier 5.x "master volume".
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        setSource(volumeNode)
    if segmentId:
        editor.setCurrentSegmentID(segmentId)


class RefineSection:
    """The section's buttons; Refine and Undo go through the widget's ``BackgroundWork`` + ``QTimer``.

    Args:
        widget: the ``MedSegDiffWidget`` (its ``ui``, ``logic``, parameter node, ``_startJob`` and ``_showError``).
    """

    def __init__(self, widget):
        self.widget = widget
        ui = widget.ui
        ui.addPositivePointButton.connect("clicked(bool)", lambda: self.place(True))
        ui.addNegativePointButton.connect("clicked(bool)", lambda: self.place(False))
        ui.paintScribblesButton.connect("clicked(bool)", self.paintScribbles)
        ui.refineButton.connect("clicked(bool)", lambda: self.run(undo=False))
        ui.undoButton.connect("clicked(bool)", lambda: self.run(undo=True))

    @property
    def _volume(self):
        return self.widget._parameterNode.inputVolume

    def place(self, positive):
        """Point placement on the volume's positive (green) or negative (red) points."""
        with slicer.util.tryWithErrorDisplay("MedSegDiff: cannot place points.", waitCursor=False):
            self.widget.logic.interactive.startPlacing(self._volume, positive)
            where = "should be" if positive else "should not be"
            self.widget.ui.statusLabel.text = f"Click in the views where the segment {where}, then Refine."

    def paintScribbles(self):
        """The Segment Editor on the result, with the foreground scribble segment selected."""
        segmentation, interactive = self.widget._parameterNode.segmentation, self.widget.logic.interactive
        interactive.scribbleSegment(segmentation, foreground=False)
        openSegmentEditor(segmentation, self._volume, interactive.scribbleSegment(segmentation, foreground=True))

    def _params(self):
        specs = self.widget.logic.serverInfo.parameters(self.widget.logic.model)
        node = self.widget._parameterNode
        chosen = {"click_radius": int(node.clickRadius), "click_reach": int(node.clickReach),
                  "click_spread": int(node.clickSpread), "click_doubt": bool(node.clickDoubt)}
        return {name: value for name, value in chosen.items() if name in specs}

    def run(self, undo):
        """Refine with the marks added since the last Refine, or undo the last one, in the background."""
        widget, volume, interactive = self.widget, self._volume, self.widget.logic.interactive
        try:
            prepared = interactive.prepareUndo(volume, self._params()) if undo else interactive.prepareRefine(
                volume, self._params())
        except Exception as e:  # no result, nothing new, a point outside the image: shown, nothing sent
            return widget._showError(e)

        def done(remote):
            result = interactive.importResults(volume, prepared, remote)
            widget._parameterNode.uncertainty = result["uncertainty"]
            widget.onUncertaintySelected()  # the overlay's window and threshold from the new map
            done = "Undone" if undo else "Refined"
            widget.ui.statusLabel.text = f"{done}: {result['interactions']} interaction(s) on the result."

        message = "Undoing the last interaction ..." if undo else "Refining with the new marks ..."
        widget._startJob(message, interactive.runRemote, done, prepared)
