"""One checkpoint file = weights + network config + diffusion config + package version.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``) so a reader never sees
a half-written model, and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import atomic_path
from .diffusion import DiffusionConfig
from .network import MedSegDiffUNet

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint", "from_payload",
    "slice_views",
]

CHECKPOINT_FORMAT = "medsegdiff-checkpoint/1"


class CheckpointError(ValueError):
    """The file is not a MedSegDiff checkpoint (or is damaged)."""


def save_checkpoint(
    path: str | Path,
    network: MedSegDiffUNet,
    diffusion: DiffusionConfig,
    metadata: dict[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``network`` (weights + config), ``diffusion`` and ``metadata`` to ``path``.

    Args:
        training_state: what resuming needs besides the weights (optimizer and learning-rate schedule state
            dicts, epoch of the run); stored under ``"training_state"``.
        weights_dtype: store floating-point weights in this dtype (e.g. ``torch.float16`` halves the file of a
            model committed to git); loading casts them back to the network's dtype.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "medsegdiff_version": __version__,
        "network_config": dict(network.config),
        "diffusion_config": diffusion.to_dict(),
        "state_dict": {
            k: v.detach().cpu().to(weights_dtype) if weights_dtype is not None and v.is_floating_point() else v.detach().cpu()
            for k, v in network.state_dict().items()
        },
        "metadata": dict(metadata or {}),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)  # a model file is meant to be shared, whatever the umask
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CheckpointError(f"{path} is not a readable MedSegDiff checkpoint: {e.__class__.__name__}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a MedSegDiff checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    return payload


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[MedSegDiffUNet, DiffusionConfig, dict[str, Any]]:
    """Rebuild the network (in eval mode, on ``device``), its diffusion config and the metadata."""
    return from_payload(read_checkpoint(path), device)


def from_payload(
    payload: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[MedSegDiffUNet, DiffusionConfig, dict[str, Any]]:
    """The network (eval mode), diffusion config and metadata of a payload from :func:`read_checkpoint`."""
    network = MedSegDiffUNet(**payload["network_config"])
    network.load_state_dict(payload["state_dict"])
    diffusion = DiffusionConfig(**payload["diffusion_config"])
    return network.to(device).eval(), diffusion, payload.get("metadata", {})


def slice_views(metadata: dict[str, Any]) -> tuple[int, ...]:
    """The axes a 2D checkpoint runs along: its metadata's ``views`` (trained on slices along each of them, e.g.
    ``[2, 1, 0]``), else its ``slice_axis`` (default 2, axial) alone.

    Raises:
        ValueError: ``views`` is not a list of distinct axes among 0, 1, 2.
    """
    views = metadata.get("views", [metadata.get("slice_axis", 2)])
    if not isinstance(views, (list, tuple)) or not views or len(set(views)) != len(views) or not set(views) <= {0, 1, 2}:
        raise ValueError(f"checkpoint metadata 'views' must list distinct axes among 0, 1, 2, got {views!r}")
    return tuple(int(v) for v in views)
