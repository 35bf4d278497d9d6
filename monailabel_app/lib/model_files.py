"""Where a model's checkpoints live, what they say about the model, and loading them when they change.

Each model has an *initial* checkpoint (the committed, pretrained one, or one given with
``--conf <model>_checkpoint PATH``) and a writable training folder holding ``best.pt`` (what inference uses
once it exists) and ``last.pt`` (where training resumes). When neither the initial nor a trained checkpoint
exists, a fresh untrained network is written to ``<training folder>/initial.pt`` so the server still starts.

The checkpoint's ``network_config`` defines the architecture; its metadata carries ``spacing``,
``slice_axis``, ``labels`` and ``label_colors`` (defaults below when absent), and for a 2D network trained on
slices along several axes ``views`` (:func:`medsegdiff.checkpoint.slice_views`).

Clients see a checkpoint by model, file name, modification time, epochs and validation Dice
(:func:`describe_checkpoint`), never by its path: paths stay in the server log.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from medsegdiff.bundle import bundle_checkpoint
from medsegdiff.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, slice_views
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet

__all__ = ["DEFAULT_METADATA", "ModelInfo", "ModelFiles", "LoadedModel", "CheckpointCache", "describe_checkpoint"]

logger = logging.getLogger(__name__)

DEFAULT_METADATA: dict[str, Any] = {
    "spacing": [3.0, 3.0, 3.0],
    "slice_axis": 2,
    "labels": {"brain": 1},
    "label_colors": {"brain": [0.86, 0.6, 0.47]},
}
"""Used for every key a checkpoint's metadata does not have."""


_DESCRIBED_METADATA = ("trained", "epochs_trained", "val_dice", "saved_at")


def describe_checkpoint(model: str, path: str | Path, mtime: float, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What clients are told about a checkpoint: model, file name, modification time, epochs, validation Dice.

    No directory: the server's folder layout is not a client's business (the path is in the server log).
    """
    return {
        "model": model,
        "file": Path(path).name,
        "mtime": mtime,
        "modified": datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds"),
        **{k: metadata[k] for k in _DESCRIBED_METADATA if k in metadata},
    }


@functools.lru_cache(maxsize=16)
def _metadata(path: str, mtime: float) -> dict[str, Any]:
    """A checkpoint file's metadata, read once per file version (``/info`` is polled by clients)."""
    return dict(read_checkpoint(path).get("metadata", {}))


def _labels(value: Any) -> dict[str, int]:
    """Label names → values from a dict or a list (list items get 1, 2, …)."""
    if isinstance(value, Mapping):
        return {str(k): int(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {str(name): i for i, name in enumerate(value, start=1)}
    raise ValueError(f"checkpoint metadata 'labels' must be a dict or a list, got {value!r}")


def _spacing(value: Any) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"checkpoint metadata 'spacing' must be 3 positive numbers (mm), got {value!r}")
    return values


@dataclass(frozen=True)
class ModelInfo:
    """What the app needs to know about a checkpoint before loading its weights."""

    network_config: dict[str, Any]
    labels: dict[str, int]
    label_colors: dict[str, list[float]]
    spacing: list[float]
    slice_axis: int
    metadata: dict[str, Any] = field(default_factory=dict)
    views: tuple[int, ...] = (2,)
    """The axes a 2D network runs along (its ``slice_axis`` alone unless trained on several views)."""

    @property
    def spatial_dims(self) -> int:
        return int(self.network_config["spatial_dims"])

    @property
    def trained(self) -> bool:
        return bool(self.metadata.get("trained", True))

    @classmethod
    def read(cls, path: str | Path) -> "ModelInfo":
        payload = read_checkpoint(path)
        metadata = {**DEFAULT_METADATA, **payload.get("metadata", {})}
        labels = _labels(metadata["labels"])
        colors = dict(DEFAULT_METADATA["label_colors"])
        colors.update({str(k): [float(c) for c in v] for k, v in dict(metadata.get("label_colors") or {}).items()})
        slice_axis = int(metadata["slice_axis"])
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"{path}: metadata 'slice_axis' must be 0, 1 or 2, got {slice_axis}")
        two_d = int(payload["network_config"]["spatial_dims"]) == 2
        try:
            views = slice_views(metadata) if two_d else (slice_axis,)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        return cls(
            network_config=dict(payload["network_config"]),
            views=views,
            labels=labels,
            label_colors={name: colors.get(name, [1.0, 1.0, 0.0]) for name in labels},
            spacing=_spacing(metadata["spacing"]),
            slice_axis=slice_axis,
            metadata=dict(payload.get("metadata", {})),
        )


@dataclass(frozen=True)
class ModelFiles:
    """The checkpoints of one model.

    Attributes:
        name: model name (``medsegdiff``, ``medsegdiff_3d``).
        initial: the checkpoint inference starts from (pretrained, configured, or a fresh untrained one).
        output_dir: writable training folder (``best.pt``, ``last.pt``, ``train_stats.json``, run logs).
    """

    name: str
    initial: Path
    output_dir: Path

    @property
    def best(self) -> Path:
        return self.output_dir / "best.pt"

    @property
    def last(self) -> Path:
        return self.output_dir / "last.pt"

    @property
    def infer_paths(self) -> list[str]:
        """For ``BasicInferTask``: the last existing path wins, so ``best.pt`` replaces the initial one."""
        return [str(self.initial), str(self.best)]

    def current(self) -> Path:
        """The checkpoint inference uses now."""
        return self.best if self.best.is_file() else self.initial

    def describe_current(self) -> dict[str, Any]:
        """:func:`describe_checkpoint` of the checkpoint inference uses now."""
        path = str(self.current())
        mtime = os.stat(path).st_mtime
        return describe_checkpoint(self.name, path, mtime, _metadata(path, mtime))

    @classmethod
    def resolve(
        cls,
        name: str,
        default_initial: Path,
        output_dir: Path,
        configured: str | None,
        fresh_network: dict[str, Any],
    ) -> "ModelFiles":
        """Pick the initial checkpoint; write a fresh untrained one when there is nothing to start from.

        Args:
            configured: ``--conf <name>_checkpoint`` value: a checkpoint, or a MONAI bundle folder (its
                ``models/model.pt``); a missing configured file is an error (a typo must not silently serve an
                untrained network).
            fresh_network: ``MedSegDiffUNet`` arguments of the fresh network (metadata: ``DEFAULT_METADATA``).
        """
        output_dir.mkdir(parents=True, exist_ok=True)
        if configured:
            initial = Path(configured).expanduser().resolve()
            if initial.is_dir():  # a MONAI bundle written by `python -m medsegdiff.bundle export`
                initial = bundle_checkpoint(initial)
            if not initial.is_file():
                raise FileNotFoundError(f"--conf {name}_checkpoint {configured}: no such file")
            return cls(name, initial, output_dir)
        if default_initial.is_file():
            return cls(name, default_initial, output_dir)
        fresh = output_dir / "initial.pt"
        if not fresh.is_file():
            logger.warning(
                "%s: no checkpoint at %s; writing an UNTRAINED %dD network to %s (train it with POST /train/%s)",
                name, default_initial, fresh_network["spatial_dims"], fresh, name,
            )
            with torch.random.fork_rng():  # the same fresh weights every time, without touching global RNG
                torch.manual_seed(0)
                network = MedSegDiffUNet(**fresh_network)
            save_checkpoint(fresh, network, DiffusionConfig(prediction_type="sample"), {**DEFAULT_METADATA, "trained": False})
        return cls(name, fresh, output_dir)


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint loaded on a device, with the file version it came from."""

    network: MedSegDiffUNet
    diffusion: DiffusionConfig
    metadata: dict[str, Any]
    path: str
    mtime: float

    def describe(self, model: str) -> dict[str, Any]:
        """:func:`describe_checkpoint` of this version (``model``: the model's name)."""
        return describe_checkpoint(model, self.path, self.mtime, self.metadata)


class CheckpointCache:
    """Loads the current checkpoint per device and reloads it when the file (path or mtime) changes."""

    def __init__(self, files: ModelFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}

    def get(self, device: str | torch.device) -> LoadedModel:
        path = str(self.files.current())
        key = str(device)
        with self._lock:
            mtime = os.stat(path).st_mtime
            cached = self._loaded.get(key)
            if cached is not None and cached.path == path and cached.mtime == mtime:
                return cached
            if cached is not None:
                logger.info("%s: checkpoint changed, reloading %s", self.files.name, path)
            network, diffusion, metadata = load_checkpoint(path, device)
            loaded = LoadedModel(network, diffusion, metadata, path, mtime)
            self._loaded[key] = loaded
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
