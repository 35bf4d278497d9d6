"""MedSegDiff: diffusion-model medical image segmentation (core, torch + monai only)."""

__version__ = "0.1.0"
