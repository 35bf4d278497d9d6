"""The recipe of the committed sample model (brain extraction on axial 3 mm slices).

One place for its architecture, grid and diffusion settings: ``scripts/train_sample_model.py`` trains it, the
MONAI Label app writes a fresh network of this shape when no checkpoint exists, and the tests and benchmarks
build networks like it.
"""

from __future__ import annotations

from typing import Any

from .diffusion import DiffusionConfig

__all__ = ["SAMPLE_MODEL_2D", "SAMPLE_SPACING_MM", "SAMPLE_SLICE_AXIS", "sample_diffusion_config"]

SAMPLE_MODEL_2D: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "num_classes": 1,
    "spatial_size": (80, 80),
    "channels": (16, 32, 64, 128),
    "attention_levels": (False, False, False, True),
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "num_head_channels": 32,
}
"""``MedSegDiffUNet`` arguments of the sample model (80x80 training slices)."""

SAMPLE_SPACING_MM = 3.0
"""Isotropic voxel size (mm) the sample model works at."""

SAMPLE_SLICE_AXIS = 2
"""Array axis the sample model slices along (2 = axial for RAS volumes)."""


def sample_diffusion_config() -> DiffusionConfig:
    """The sample model's diffusion settings: 1000 linear-beta training steps, x0 ("sample") prediction."""
    return DiffusionConfig(num_train_timesteps=1000, schedule="linear_beta", prediction_type="sample")
