"""Device choice: CUDA when present (the users' GPU servers), CPU otherwise; optional mixed precision on CUDA."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["select_device", "autocast"]


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → CUDA if available else CPU; ``"cuda"`` without a GPU raises ``ValueError``."""
    if preference in (None, "auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {str(preference)!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(preference)!r} was requested but CUDA is not available on this server")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {str(preference)!r}")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
