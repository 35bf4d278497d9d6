"""Run mode and settings of the benchmark (``BENCH_QUICK=1`` for the tiny CI run), paths and the data caveat."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "QUICK", "Settings", "FULL", "QUICK_SETTINGS", "SETTINGS", "SAMPLE_MODEL_PATH", "SPACING_MM", "SLICE_SIZE", "CAVEAT"]


REPO = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
SAMPLE_MODEL_PATH = REPO / "monailabel_app" / "model" / "medsegdiff_brain_2d.pt"
SPACING_MM = 3.0
SLICE_SIZE = (80, 80)
CAVEAT = (
    "Real heads from registry packages (templates / single subjects): smoother and more alike than clinical "
    "scans, so absolute scores are optimistic. Test heads were never seen in training."
)


@dataclass(frozen=True)
class Settings:
    """How much each measurement does (``FULL`` for ``make bench``, ``QUICK`` for ``BENCH_QUICK=1``)."""

    quick: bool
    # 1. sampling cost vs quality (held-out Colin27 slices at 3 mm)
    held_out_slices: int
    ddim_steps: tuple[int, ...]
    ddpm_quality_slices: int  # slices on which the 5 DDPM chains really run (batched) for the Dice
    ddpm_quality_steps: int  # 1000 = the original protocol; quick mode uses a strided chain
    ddpm_timed_steps: int  # sequential batch-1 DDPM steps timed for the original protocol's wall time
    comparison_slices: int  # slices of the feature-reuse and member-batching comparisons
    # whole volumes (infer task, uncertainty, cross-subject inference)
    volume_slab_mm: float | None  # None = the whole head
    eval_steps: int  # DDIM steps of the bench's own whole-volume inference (10 = the app default)
    eval_members: int
    # 3. cross-subject
    train_seconds_brain: float
    train_seconds_tissue: float
    # 5. active learning
    al_rounds: int
    al_train_iterations: int  # fine-tuning iterations per round and strategy (iterations: fair under load)
    al_score_stride: int  # score every n-th axial slice of a pool volume
    # 6. training speed
    speed_iterations: int
    # a sample model trained here when the committed one is missing
    fallback_model_seconds: float
    members: int = 5
    default_steps: int = 10


FULL = Settings(
    quick=False,
    held_out_slices=6,
    ddim_steps=(1, 2, 5, 10, 25, 50, 100),
    ddpm_quality_slices=2,
    ddpm_quality_steps=1000,
    ddpm_timed_steps=200,
    comparison_slices=4,
    volume_slab_mm=None,
    eval_steps=10,
    eval_members=5,
    train_seconds_brain=100.0,
    train_seconds_tissue=90.0,
    al_rounds=3,
    al_train_iterations=40,
    al_score_stride=2,
    speed_iterations=25,
    fallback_model_seconds=300.0,
)
QUICK_SETTINGS = Settings(
    quick=True,
    held_out_slices=2,
    ddim_steps=(1, 2, 10),
    ddpm_quality_slices=1,
    ddpm_quality_steps=20,
    ddpm_timed_steps=10,
    comparison_slices=2,
    volume_slab_mm=12.0,
    eval_steps=2,
    eval_members=2,
    train_seconds_brain=6.0,
    train_seconds_tissue=6.0,
    al_rounds=1,
    al_train_iterations=3,
    al_score_stride=8,
    speed_iterations=6,
    fallback_model_seconds=40.0,
)
SETTINGS = QUICK_SETTINGS if QUICK else FULL

