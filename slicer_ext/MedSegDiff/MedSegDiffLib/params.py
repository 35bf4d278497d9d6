"""Inference parameters the server declares, and validation of user values against them.

A MONAI Label model declares its parameters in ``/info/`` under ``models[<name>]["config"]`` with the
usual MONAI Label convention: a scalar is the default value, a list is a choice whose first item is the
default. The MedSegDiff app also describes them under ``models[<name>]["parameters"]`` as
``{"default", "min", "max", "help"}`` or ``{"default", "choices", "help"}``; those descriptions win.
Ranges the server does not declare come from ``KNOWN_RANGES``.
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

__all__ = ["KNOWN_RANGES", "ParameterSpec", "declared_parameters", "default_values", "validate_params"]

INT32_MAX = 2**31 - 1

# Limits of the MedSegDiff parameters (the server only declares defaults and choices).
KNOWN_RANGES = {
    "num_inference_steps": (1, 1000),
    "num_ensemble": (1, 32),
    "seed": (0, INT32_MAX),
}


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter.

    Attributes:
        name: parameter name.
        kind: ``int``, ``float``, ``bool``, ``str`` or ``choice``.
        default: default value.
        minimum: inclusive lower bound for numbers, or None.
        maximum: inclusive upper bound for numbers, or None.
        choices: allowed values for ``choice``.
        help: the server's description, for tooltips.
    """

    name: str
    kind: str
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Sequence[Any] = ()
    help: str = ""


def _kind_of(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def _spec(name, declared):
    minimum, maximum = KNOWN_RANGES.get(name, (None, None))
    if isinstance(declared, dict) and "default" in declared:
        default = declared["default"]
        minimum = declared.get("min", minimum)
        maximum = declared.get("max", maximum)
        choices = declared.get("choices")
        text = str(declared.get("help", ""))
        if choices:
            return ParameterSpec(name, "choice", default, choices=tuple(choices), help=text)
        kind = _kind_of(default)
        if kind not in ("int", "float"):
            minimum = maximum = None
        return ParameterSpec(name, kind, default, minimum, maximum, help=text)
    if isinstance(declared, (list, tuple)):
        if not declared:
            raise ValueError(f"server declares parameter '{name}' with an empty list of choices")
        return ParameterSpec(name, "choice", declared[0], choices=tuple(declared))
    kind = _kind_of(declared)
    if kind not in ("int", "float"):
        minimum = maximum = None
    return ParameterSpec(name, kind, declared, minimum, maximum)


def declared_parameters(model_info):
    """Parameter specs of one model entry of ``/info/`` (``info["models"][name]``).

    Args:
        model_info: the model dict; its ``config`` holds the declared parameters and its optional
            ``parameters`` their descriptions (default, range or choices, help).

    Returns:
        ``{name: ParameterSpec}`` in declaration order.
    """
    declared = dict((model_info or {}).get("config") or {})
    described = (model_info or {}).get("parameters") or {}
    # a list default is no option of the table: the interaction's click lists (MedSegDiffLib.interaction)
    declared.update({
        n: d for n, d in described.items() if isinstance(d, dict) and "default" in d and not isinstance(d["default"], list)
    })
    return {name: _spec(name, value) for name, value in declared.items()}


def default_values(specs):
    """``{name: default}`` of the given specs."""
    return {name: spec.default for name, spec in specs.items()}


def _check(spec, value):
    name = spec.name
    if spec.kind == "choice":
        if value not in spec.choices:
            raise ValueError(f"{name}={value!r} is not allowed: choose one of {list(spec.choices)}")
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be true or false")
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name}={value!r} must be a whole number")
        value = int(value)
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}={value!r} must be a number")
        value = float(value)
    else:
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} must be text")
        return value
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{name}={value!r} is too small: allowed range is [{spec.minimum}, {spec.maximum}]")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{name}={value!r} is too large: allowed range is [{spec.minimum}, {spec.maximum}]")
    return value


def validate_params(params, specs):
    """Check user values against the server's declared parameters.

    Args:
        params: ``{name: value}`` chosen by the user; names must be declared.
        specs: ``declared_parameters(model_info)``.

    Returns:
        A new dict with the validated values (ints as ``int``, floats as ``float``).

    Raises:
        ValueError: naming the parameter and the bad value, and saying what is allowed.
    """
    clean = {}
    for name, value in (params or {}).items():
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"unknown parameter {name}={value!r}: the server declares {sorted(specs)}")
        clean[name] = _check(spec, value)
    return clean
