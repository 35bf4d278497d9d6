"""Tissue task (CSF / GM / WM) on a subject the model never saw: two templates, each held out in turn.

Two registry packages carry tissue-labelled T1s: nilearn's ICBM152 2009a (``mni152_tissue``) and CAT12's template
(``cat12_tissue``, from deepmriprep). Both are skull-stripped averages of many subjects in MNI space, labelled by one
recipe (GM / WM probability maps, CSF = brain - GM - WM): smoother and more alike than two clinical scans. Each fold
trains on one and tests on the other, on the model grid of the protocol (3 mm, axial 80 x 80), with its iterations,
batch, optimiser and seeds. Models:

- ``medsegdiff``: the protocol's MedSegDiff with the explicit background channel (C + 1 one-hot, argmax over all),
  DDIM ``eval_steps`` x ``eval_members``, mean fusion;
- ``medsegdiff_no_background``: the same without it (background = 1 - the sum of the class channels);
- ``medsegdiff_dice``: ``medsegdiff`` trained with MSE + soft Dice on the predicted mask
  (``DiffusionConfig.dice_weight`` 1: every class weighs alike, whatever its size);
- ``unet``: the size-matched U-Net (softmax over C + 1).

Reported: each class's Dice on the test template's native grid (mean ± sd over folds x seeds) and the paired
difference of MedSegDiff to each other model over the (fold, seed) cases. One JSON per cell under ``<out>/cells``;
``BENCH_WORKERS`` processes share them; ``BENCH_PARTIAL=1`` summarises what is there.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from medsegdiff.baselines import count_parameters, size_matched_unet
from medsegdiff.metrics import dice_per_class
from medsegdiff.network import MedSegDiffUNet

from .context import Context
from .models import PROTOCOL_NETWORK, predict, train
from .protocol import Cells, cell_key, compute_cells, module_main
from .protocol_report import format_difference
from .report import Section, finite, md_table
from .stats import mean_sd, paired_difference

__all__ = ["FOLDS", "MODELS", "CLASSES", "PAIRS", "build", "run"]

FOLDS = (("mni152_tissue", "cat12_tissue"), ("cat12_tissue", "mni152_tissue"))
"""(training template, held-out template) of each fold."""
TRAINED_AS = {"medsegdiff": "medsegdiff", "medsegdiff_no_background": "medsegdiff", "medsegdiff_dice": "medsegdiff_dice",
              "unet": "unet"}
"""How ``bench.models`` trains and samples each tissue model (its ``train`` / ``predict`` kind)."""
MODELS = tuple(TRAINED_AS)
CLASSES = ("csf", "gm", "wm")
PAIRS = (("medsegdiff", "medsegdiff_no_background"), ("medsegdiff_dice", "medsegdiff"), ("medsegdiff", "unet"),
         ("medsegdiff_dice", "unet"))
"""(model, other) pairs whose paired Dice differences are reported (``summary[model]["vs_<other>"]``)."""


def build(model: str, seed: int) -> nn.Module:
    """A freshly initialised three-class network for ``model`` (weights from ``torch.manual_seed(seed)``)."""
    if model not in TRAINED_AS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    settings = {**PROTOCOL_NETWORK, "num_classes": len(CLASSES), "background_channel": model != "medsegdiff_no_background"}
    torch.manual_seed(seed)
    if model != "unet":
        return MedSegDiffUNet(**settings)
    target = count_parameters(MedSegDiffUNet(**settings))
    torch.manual_seed(seed)
    return size_matched_unet(target, num_classes=len(CLASSES), dropout=0.2)


def _key(test: str, model: str, seed: int) -> str:
    return cell_key(test, f"tissue_{model}", seed)


def _cell(ctx: Context, train_on: str, test: str, model: str, seed: int) -> dict[str, Any]:
    s = ctx.settings
    images, labels = ctx.grid(train_on).slices()
    network = build(model, seed).to(ctx.device)
    kind = TRAINED_AS[model]
    trained = train(kind, network, images, labels, s.iterations, seed, ctx.device)
    volume = ctx.test_volume(test)
    out = predict(kind, network, volume, steps=s.eval_steps, members=s.eval_members, seed=seed)
    mean = out["members"].mean(axis=0)
    native = volume.to_native(mean, fill=[1.0] + [0.0] * len(CLASSES)).argmax(axis=0).astype(np.uint8)
    dice = dice_per_class(native, volume.native_label, len(CLASSES))
    return {"train": train_on, "test": test, "model": model, "seed": seed, "train_stats": trained.stats,
            "infer_seconds": out["seconds"], "dice": dict(zip(CLASSES, dice)),
            "predicted_fraction": {c: float((native == i + 1).mean()) for i, c in enumerate(CLASSES)}}


def _plan(ctx: Context) -> list[tuple[str, str, str, int]]:
    return [(train_on, test, model, seed) for train_on, test in FOLDS for model in MODELS
            for seed in range(ctx.settings.seeds)]


def _work(ctx: Context, cells: Cells) -> None:
    for train_on, test, model, seed in _plan(ctx):
        key = _key(test, model, seed)
        if cells.get(key) is None and cells.claim(key):
            print(f"[bench] tissue worker {os.getpid()}: {key}", flush=True)
            cells.put(key, _cell(ctx, train_on, test, model, seed))


def _summary(found: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    summary: dict[str, Any] = {}
    rows = []
    for model in MODELS:
        items = [f for f in found if f["model"] == model]
        if not items:
            continue
        entry: dict[str, Any] = {"cases": len(items)}
        for c in (*CLASSES, "mean"):
            values = [float(np.mean(list(f["dice"].values()))) if c == "mean" else f["dice"][c] for f in items]
            entry[c] = mean_sd(values)
            entry[f"{c}_per_case"] = {f"{f['test']}/s{f['seed']}": v for f, v in zip(items, values)}
        summary[model] = entry
        rows.append([model, len(items),
                     *(f"{entry[c]['mean']:.3f} ± {entry[c]['sd'] or 0:.3f}" for c in (*CLASSES, "mean"))])
    table = md_table(["model", "cases", *(f"Dice {c}" for c in (*CLASSES, "mean"))], rows)
    diff_rows = []
    for model, other in PAIRS:
        if model not in summary or other not in summary:
            continue
        diffs = {c: paired_difference(summary[model][f"{c}_per_case"], summary[other][f"{c}_per_case"])
                 for c in (*CLASSES, "mean")}
        summary[model][f"vs_{other}"] = diffs
        diff_rows.append([f"{model} − {other}", *(format_difference(diffs[c]) for c in (*CLASSES, "mean"))])
    if diff_rows:
        headers = ["difference", *(f"Δ Dice {c} (95 % CI over fold x seed)" for c in (*CLASSES, "mean"))]
        table += "\n\n" + md_table(headers, diff_rows)
    return summary, table


def run(ctx: Context) -> Section:
    cells = Cells(ctx)
    compute_cells(ctx, cells, _work, "bench.tissue")
    found = [cells.get(_key(test, model, seed)) for _, test, model, seed in _plan(ctx)]
    summary, table = _summary([f for f in found if f is not None])
    results = {"tissue": summary, "folds": [list(f) for f in FOLDS], "iterations": ctx.settings.iterations,
               "seeds": ctx.settings.seeds, "sampler": f"DDIM {ctx.settings.eval_steps} x {ctx.settings.eval_members}",
               "data_note": "two templates (averages of many subjects, MNI space), one labelling recipe",
               "quick_note": "QUICK MODE: tiny settings; numbers mean nothing" if ctx.settings.quick else None}
    return Section("tissue", finite(results), table)


if __name__ == "__main__":
    raise SystemExit(module_main(_work, "tissue"))
