"""Everything of the MedSegDiff Slicer module that does not need Slicer.

No module of this package imports ``slicer``, ``qt``, ``vtk`` or ``ctk``: it is tested with plain pytest
against a real MONAI Label server (tests/test_slicer_*.py).
"""

from .client import InferResult, MedSegDiffClient, ServerError, parse_multipart
from .conversions import (
    DEFAULT_PALETTE,
    label_colors,
    label_items,
    most_uncertain_slice,
    read_geometry,
    read_image,
    remap_labels,
    transfer_to_grid,
    uncertainty_display_range,
    write_image,
)
from .interaction import DEFAULT_LABEL_IN_VALUES, Interaction, InteractionHistory, ijk_point, label_in_values
from .jobs import MAIN_THREAD_WAIT_S, TIMER_INTERVAL_MS, BackgroundJob, BackgroundWork
from .params import KNOWN_RANGES, ParameterSpec, declared_parameters, default_values, validate_params
from .serverinfo import DEFAULT_MODEL, DEFAULT_STRATEGY, ServerInfo
from .training import FINISHED_STATES, TrainingPoller, TrainingProgress, training_progress

__all__ = [
    "MAIN_THREAD_WAIT_S",
    "TIMER_INTERVAL_MS",
    "BackgroundJob",
    "BackgroundWork",
    "DEFAULT_MODEL",
    "DEFAULT_LABEL_IN_VALUES",
    "DEFAULT_PALETTE",
    "DEFAULT_STRATEGY",
    "FINISHED_STATES",
    "InferResult",
    "Interaction",
    "InteractionHistory",
    "KNOWN_RANGES",
    "MedSegDiffClient",
    "ParameterSpec",
    "ServerError",
    "ServerInfo",
    "TrainingPoller",
    "TrainingProgress",
    "declared_parameters",
    "ijk_point",
    "label_in_values",
    "default_values",
    "label_colors",
    "label_items",
    "most_uncertain_slice",
    "parse_multipart",
    "read_geometry",
    "read_image",
    "remap_labels",
    "training_progress",
    "transfer_to_grid",
    "uncertainty_display_range",
    "validate_params",
    "write_image",
]
