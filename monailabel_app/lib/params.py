"""Request parameters of the MedSegDiff tasks: declaration (for ``/info``) and validation.

MONAI Label shows a task's ``config()`` to clients: a scalar is a default value, a list is a choice whose first
item is the default. A client that does not send a parameter gets the declared value merged into its request,
so a list value equal to the declared choices means "the default". Every other value is checked here, and a bad
one raises :class:`InvalidParameter`, whose message names the parameter, the allowed values and what was sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medsegdiff.training import LR_SCHEDULES

__all__ = [
    "InvalidParameter",
    "IntParam",
    "FloatParam",
    "ChoiceParam",
    "BoolParam",
    "TextParam",
    "PointsParam",
    "UnknownParameter",
    "INFER_PARAMS",
    "MONAILABEL_TRAIN_PARAMS",
    "SCORING_PARAMS",
    "TRAIN_PARAMS",
    "declare",
    "parse",
    "check_values",
]

SEED_MAX = 2**31 - 1


class InvalidParameter(ValueError):
    """A request parameter has a value outside what the task accepts."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class UnknownParameter(InvalidParameter):
    """A request key the task does not declare, close to one it does (``suggestion``): most likely a typo."""

    def __init__(self, name: str, suggestion: str) -> None:
        super().__init__(name, f"unknown parameter `{name}`; did you mean `{suggestion}`?")
        self.suggestion = suggestion


@dataclass(frozen=True)
class IntParam:
    """An integer in ``[low, high]``; integral floats and digit strings ("5") are accepted too."""

    name: str
    default: int
    low: int
    high: int
    help: str = ""

    def declared(self) -> Any:
        return self.default

    def parse(self, value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter(self.name, f"{self.name} must be an integer in [{self.low}, {self.high}], got {value!r}")
        if not self.low <= value <= self.high:
            raise InvalidParameter(self.name, f"{self.name} must be in [{self.low}, {self.high}], got {value}")
        return value


@dataclass(frozen=True)
class FloatParam:
    """A finite number in ``[low, high]`` (``high_open``: strictly below ``high``)."""

    name: str
    default: float
    low: float
    high: float
    high_open: bool = False
    help: str = ""

    def declared(self) -> Any:
        return self.default

    def parse(self, value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidParameter(self.name, f"{self.name} must be a number, got {value!r}")
        above = value >= self.high if self.high_open else value > self.high
        if value < self.low or above:
            bracket = ")" if self.high_open else "]"
            raise InvalidParameter(self.name, f"{self.name} must be in [{self.low}, {self.high}{bracket}, got {value}")
        return float(value)


@dataclass(frozen=True)
class ChoiceParam:
    """One of ``choices`` (the first is the default)."""

    name: str
    choices: tuple[str, ...]
    help: str = ""

    def declared(self) -> Any:
        return list(self.choices)

    def parse(self, value: Any) -> str:
        if isinstance(value, (list, tuple)) and list(value) == list(self.choices):
            return self.choices[0]  # the declared list itself: the client kept the default
        if not isinstance(value, str) or value not in self.choices:
            raise InvalidParameter(self.name, f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class BoolParam:
    """A boolean; also ``"true"``/``"false"`` (any case), ``1``/``0``."""

    name: str
    default: bool
    help: str = ""

    def declared(self) -> Any:
        return self.default

    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise InvalidParameter(self.name, f"{self.name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class TextParam:
    """A string that matches ``pattern`` as a whole (the pattern also bounds its length)."""

    name: str
    default: str
    pattern: str
    help: str = ""

    def declared(self) -> Any:
        return self.default

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise InvalidParameter(self.name, f"{self.name} must match {self.pattern}, got {value!r}")
        return value


@dataclass(frozen=True)
class PointsParam:
    """A list of voxel indices ``[[i, j, k], …]`` (integers; integral floats accepted); default: no points.

    Whether the points lie inside the image is checked by the task once the image is loaded.
    """

    name: str
    dims: int = 3
    max_points: int = 1000
    help: str = ""

    def declared(self) -> Any:
        return []

    def parse(self, value: Any) -> list[list[int]]:
        if not isinstance(value, (list, tuple)):
            raise InvalidParameter(self.name, f"{self.name} must be a list of [i, j, k] voxel indices, got {value!r}")
        if len(value) > self.max_points:
            raise InvalidParameter(self.name, f"{self.name} holds {len(value)} points, at most {self.max_points} allowed")
        points = []
        for n, point in enumerate(value):
            if not isinstance(point, (list, tuple)) or len(point) != self.dims:
                raise InvalidParameter(
                    self.name, f"{self.name}[{n}] must have {self.dims} coordinates [i, j, k], got {point!r}"
                )
            if any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c != int(c)
                   for c in point):
                raise InvalidParameter(self.name, f"{self.name}[{n}] must hold integer voxel indices, got {point!r}")
            points.append([int(c) for c in point])
        return points


Param = IntParam | FloatParam | ChoiceParam | BoolParam | TextParam | PointsParam

INFER_PARAMS: tuple[Param, ...] = (
    IntParam("num_inference_steps", 2, 1, 1000, "reverse-diffusion steps per ensemble member (2: see the README's sampling numbers)"),
    IntParam("num_ensemble", 6, 1, 32, "independent samples fused into the label; their disagreement is the uncertainty "
             "(a model of several views: member m along view m % views; 6, the default, is 2 per view of three)"),
    ChoiceParam("sampler", ("ddim", "ddpm"), "ddim: deterministic, few steps; ddpm: ancestral (stochastic) steps"),
    IntParam("seed", 0, 0, SEED_MAX, "seed of ensemble member 0 (member m uses seed + m): same seed, same result"),
    ChoiceParam("device", ("auto", "cpu", "cuda"), "auto: CUDA when the server has a GPU, else CPU"),
    ChoiceParam("fusion", ("mean", "vote", "staple"), "how members are fused: soft mean, majority vote or STAPLE"),
    FloatParam("eta", 0.0, 0.0, 1.0, help="DDIM stochasticity: 0 deterministic given the seed, 1 as noisy as DDPM (ddim only)"),
    BoolParam(
        "largest_component", True,
        "true: keep only the largest connected piece of each label (brain extraction: removes skull and neck "
        "islands); false for structures in several pieces",
    ),
    BoolParam(
        "output_probability", False,
        "true: also store the fused class probabilities (float32, one channel per foreground class) in the "
        "datastore as the image's 'probability' label",
    ),
    PointsParam("foreground", help="interactive correction: [i, j, k] image voxels that must be the marked class"),
    PointsParam("background", help="interactive correction: [i, j, k] image voxels that must be background"),
    IntParam("click_radius", 2, 0, 10, "radius (model-grid voxels) of the ball each click marks; a 2D model re-samples the slices it crosses"),
    IntParam("click_reach", 0, 0, 40, "slices (model grid) each side beyond a click's ball on which a 2D model with "
             "guidance channels reads the click as a hint (guidance only, not forced): a click can correct an error "
             "that spans more slices than its ball; those slices are re-sampled too (0, the default: the ball "
             "alone; the bench measured hints losing points on held-out heads with the committed model)"),
    IntParam("click_spread", 3, 0, 20, "model-grid voxels around a click within which the boundary also moves one "
             "voxel towards the clicked class, where the previous result's ensemble found that class at least as "
             "likely as at the voxels the click corrected and the image is as bright as there (default 3: 9 mm, "
             "wider spreads fell below the painted ball on some heads in the bench; 0: the ball and what the "
             "re-sampling connects to it)"),
    BoolParam("click_doubt", True, "true: after a click, the uncertainty is raised to its maximum on the voxels "
              "anywhere in the image like the ones the click corrected (just outside the region of the clicked "
              "class, at least as likely of it and as bright as there): where the same error is probably repeated. "
              "The label does not change; false: the ensemble's entropy alone"),
    IntParam("uncertainty_margin", 1, 0, 3, "model-grid voxels by which the uncertainty shown allows the boundary "
             "to move: the entropy of the fused probabilities averaged with two copies of them whose boundary is "
             "moved that far out and in, since a reference drawn by another tool may end a voxel further in or out "
             "than the ensemble's boundary (1, the default: see the README's 'Boundary-shifted uncertainty'; 0: the "
             "ensemble's entropy as it is). The label does not change"),
    IntParam("marked_class", 1, 1, 255, "the label value foreground clicks and scribbles mark"),
)
"""Parameters of ``POST /infer/<model>``."""

SCORING_PARAMS: tuple[Param, ...] = (
    IntParam("num_inference_steps", 2, 1, 1000, "steps per member while scoring (few: scoring must be fast)"),
    IntParam("num_ensemble", 3, 2, 32, "members while scoring (at least 2: the score is their disagreement)"),
    IntParam("seed", 0, 0, SEED_MAX, "seed of member 0"),
    ChoiceParam("device", ("auto", "cpu", "cuda"), "auto: CUDA when the server has a GPU, else CPU"),
    BoolParam("force", False, "true: score again the images already scored with the current model"),
)
"""Parameters of ``POST /scoring/<model>_uncertainty``."""

TRAIN_PARAMS: tuple[Param, ...] = (
    IntParam("max_epochs", 20, 1, 100000, "epochs in this run"),
    FloatParam("val_split", 0.2, 0.0, 1.0, high_open=True, help="fraction of the labelled images held out for validation"),
    FloatParam("learning_rate", 2e-4, 1e-8, 1.0, help="AdamW learning rate"),
    ChoiceParam(
        "lr_schedule", LR_SCHEDULES,
        "cosine: the learning rate falls from learning_rate to 1 % of it over this run's epochs",
    ),
    IntParam("batch_size", 8, 1, 1024, "slices (2D) or patches (3D) per iteration"),
    IntParam("samples_per_epoch", 128, 1, 1000000, "random slices / patches drawn from the labelled images per epoch"),
    IntParam("val_num_inference_steps", 2, 1, 1000, "sampling steps of the validation Dice"),
    IntParam("val_num_ensemble", 2, 1, 32, "ensemble members of the validation Dice"),
)
"""Parameters of ``POST /train/<model>`` added to MONAI Label's own (``name``, ``pretrained``, ``multi_gpu``, …)."""

MONAILABEL_TRAIN_PARAMS: tuple[Param, ...] = (
    TextParam("name", "train_01", r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "run name (a folder in the training folder)"),
    BoolParam("pretrained", True, "false: start from fresh weights"),
    TextParam("device", "cpu", r"[A-Za-z0-9 _.:-]{1,64}", "MONAI Label's device name (cpu, cuda, cuda:N, a GPU name)"),
    IntParam("early_stop_patience", -1, -1, 100000, "epochs without a better Dice before stopping (-1: never)"),
    BoolParam("multi_gpu", True, "one worker process per GPU"),
    TextParam("gpus", "all", r"all|\d+(,\d+)*", "GPUs of a multi_gpu run: all, or indices like 0,1"),
    ChoiceParam("tracking", ("None", "mlflow"), "mlflow: log the run to tracking_uri"),
    TextParam("tracking_uri", "", r"\S{0,2000}", "MLflow database or server URI"),
    TextParam("tracking_experiment_name", "", r"[^\x00-\x1f]{0,200}", "MLflow experiment (default: the model name)"),
)
"""MONAI Label's own train parameters: declared (with their defaults) by ``BasicTrainTask``, checked here."""


def declare(params: Sequence[Param]) -> dict[str, Any]:
    """The ``config()`` entries of ``params``: defaults, and choice lists (first = default)."""
    return {p.name: p.declared() for p in params}


def parse(request: Mapping[str, Any], params: Sequence[Param]) -> dict[str, Any]:
    """Validated values of ``params`` from ``request`` (defaults for the missing ones).

    Raises:
        InvalidParameter: a value is out of range or not of the declared kind.
    """
    values = {}
    for p in params:
        value = request.get(p.name)
        values[p.name] = p.parse(p.declared() if value is None else value)
    return values


def check_values(request: Mapping[str, Any], params: Sequence[Param], declared: Mapping[str, Any]) -> None:
    """Check the values ``request`` gives to ``params``; a value equal to its ``declared`` default passes as is.

    For parameters another layer reads and converts (MONAI Label's own): nothing is replaced.

    Raises:
        InvalidParameter: a value is not of the declared kind or range.
    """
    for p in params:
        if p.name in request and request[p.name] is not None and request[p.name] != declared.get(p.name):
            p.parse(request[p.name])
