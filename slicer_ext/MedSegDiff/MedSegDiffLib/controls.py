"""Filling the module's controls from the server's declared parameters, without importing Qt.

The functions take the widgets (spin boxes, combo boxes) and only set their Python properties, so the widget
file stays thin; the parameter specs come from ``params.declared_parameters``.
"""

__all__ = ["applyServerParameters", "buttonStates", "choiceParams", "fillComboBox", "serverDefaults", "setUncertaintyControls"]


def fillComboBox(comboBox, items, preferred=None):
    """Replace the items of a combo box and select ``preferred`` (else the current text, else the first)."""
    current = comboBox.currentText
    wasBlocked = comboBox.blockSignals(True)
    comboBox.clear()
    for item in items:
        comboBox.addItem(str(item))
    index = comboBox.findText(str(preferred)) if preferred is not None else -1
    comboBox.currentIndex = max(index if index >= 0 else comboBox.findText(current), 0)
    comboBox.blockSignals(wasBlocked)


def applyServerParameters(specs, spinBoxes, comboBoxes):
    """Spin box ranges and tooltips, combo box choices, from the server's parameter specs.

    Args:
        specs: ``{name: ParameterSpec}`` of the model.
        spinBoxes: ``{name: spin box}`` for whole-number parameters.
        comboBoxes: ``{name: combo box}`` for parameters with a list of choices.
    """
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
    for name, comboBox in comboBoxes.items():
        spec = specs.get(name)
        comboBox.enabled = spec is not None and spec.kind == "choice"
        if not comboBox.enabled:
            comboBox.clear()
            continue
        if spec.help:
            comboBox.toolTip = f"{name}: {spec.help}"
        fillComboBox(comboBox, spec.choices, preferred=comboBox.currentText or spec.default)
        if comboBox.currentText not in [str(c) for c in spec.choices]:
            comboBox.currentIndex = max(comboBox.findText(str(spec.default)), 0)


def serverDefaults(specs):
    """``{name: default}`` of the whole-number parameters the server declares."""
    return {name: int(spec.default) for name, spec in specs.items() if isinstance(spec.default, int)
            and not isinstance(spec.default, bool)}  # fmt: skip


def choiceParams(specs, comboBoxes):
    """``{name: selected choice}`` for the declared choice parameters with a selection."""
    return {name: box.currentText for name, box in comboBoxes.items() if name in specs and box.currentText}


def setUncertaintyControls(windowWidget, thresholdSlider, low, high):
    """Colour window (a range widget) and threshold slider over ``[low, high]``, threshold at 10 %, no signals."""
    widgets = (windowWidget, thresholdSlider)
    blocked = [w.blockSignals(True) for w in widgets]
    try:
        windowWidget.setRange(low, high)
        windowWidget.setValues(low, high)
        thresholdSlider.minimum, thresholdSlider.maximum = low, high
        thresholdSlider.value = low + 0.1 * (high - low)
    finally:
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)


def buttonStates(serverInfo, work, hasStrategies, volume, segmentation, imageId, uncertainty, canUndo=False):
    """``{button name in the .ui: enabled}`` for the module's state.

    Args:
        serverInfo: the connected server's ``ServerInfo``, or None.
        work: the widget's ``BackgroundWork``.
        hasStrategies: the strategy combo box has entries.
        volume, segmentation, uncertainty: the selected nodes (or None).
        imageId: the volume's datastore image id, or None.
        canUndo: the volume's current result has an interaction to undo.
    """
    connected, idle = serverInfo is not None, not work.busy
    ready = connected and idle
    onResult = segmentation is not None and imageId is not None  # points and Refine correct a server result
    return {
        "connectButton": idle,
        "nextSampleButton": ready and hasStrategies,
        "uploadButton": ready and volume is not None,
        "runButton": ready and volume is not None,
        "editSegmentsButton": segmentation is not None,
        "submitButton": ready and segmentation is not None and imageId is not None,
        "jumpToUncertainButton": uncertainty is not None,
        "startTrainingButton": ready and work.poller is None and bool(serverInfo.trainers),
        "stopTrainingButton": ready,
        "addPositivePointButton": onResult,
        "addNegativePointButton": onResult,
        "paintScribblesButton": segmentation is not None,
        "refineButton": ready and onResult,
        "undoButton": ready and canUndo,
    }
