"""Does an uncertainty that lets the boundary move a voxel find the wrong voxels better? Margins against none.

The infer task shows the entropy of the fused probabilities averaged with two copies whose boundary is moved
``uncertainty_margin`` voxels out and in (:func:`~medsegdiff.uncertainty.with_boundary_shifts`). This section
scores that map for each margin of :data:`MARGINS` (0: the ensemble's own entropy) on the held-out heads:

- the served recipe's saved protocol networks of the run folder (``BENCH_OUT``; ``cells/<head>__<model>__s<seed>.pt``),
  each head sampled again as the protocol sampled it (DDIM ``eval_steps``, ``eval_members``, the cell's seed);
- the U-Net's softmax (its saved maps, ``cells/<head>__unet__s<seed>.npz``) and the deep ensemble (all of them).

Scored as the protocol judges the entropy (the model-grid map taken to the native grid): its AUROC for the wrong
voxels over the head and within 6 mm of the reference surface. Reported per model and margin: the mean over the
(head, seed) cases, the paired difference to margin 0 (95 % t-interval over the cases), how many cases are lower,
and per margin the served recipe against each baseline shifted alike (per-head means, paired over the heads).
One JSON per case under ``<out>/cells`` (``…__shift``); trains nothing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from medsegdiff.evaluation import auroc
from medsegdiff.uncertainty import predictive_entropy, with_boundary_shifts

from .context import Context
from .grid import GridVolume
from .judge import native_errors
from .models import SERVED_RECIPE, build, eval_members, predict, views
from .protocol import Cells, cell_key, compute_cells, module_main
from .readme_cells import fmt
from .report import Section, finite, md_table
from .stats import mean_sd, paired_difference

__all__ = ["MARGINS", "BASELINES", "SCORES", "shift_scores", "compare_margins", "run"]

MARGINS = (0, 1, 2)
BASELINES = ("unet_softmax", "deep_ensemble")
SCORES = {"auroc": "AUROC head", "auroc_6mm": "AUROC ≤ 6 mm"}


def shift_scores(volume: GridVolume, members: np.ndarray) -> dict[str, dict[str, float]]:
    """Member class distributions (N, K, H, W, Z) of ``volume`` → per margin the AUROC of the boundary-shifted
    entropy for the wrong voxels over the head and within :data:`~bench.judge.BAND_MM` of the reference."""
    mean = members.mean(axis=0)
    scored = native_errors(volume, mean)
    errors, head, band = scored.errors, scored.head, scored.band
    foreground = torch.from_numpy(np.ascontiguousarray(mean[None, 1:], dtype=np.float32))
    out = {}
    for margin in MARGINS:
        shown = volume.to_native(predictive_entropy(with_boundary_shifts(foreground, margin))[0].numpy())[0]
        out[str(margin)] = {"auroc": auroc(shown[head], errors[head]), "auroc_6mm": auroc(shown[band], errors[band])}
    return out


def _key(head: str, model: str, seed: int) -> str:
    return f"{cell_key(head, model, seed)}__shift"


def _work(ctx: Context, cells: Cells) -> None:
    s = ctx.settings
    for head in s.folds:
        volume = None
        for seed in range(s.seeds):
            key = cell_key(head, SERVED_RECIPE, seed)
            if cells.network_path(key).is_file() and cells.get(_key(head, SERVED_RECIPE, seed)) is None and cells.claim(_key(head, SERVED_RECIPE, seed)):
                print(f"[bench] boundary_shift worker {os.getpid()}: {key}", flush=True)
                volume = ctx.test_volume(head) if volume is None else volume
                network = build(SERVED_RECIPE, seed).to(ctx.device)
                network.load_state_dict(torch.load(cells.network_path(key), map_location=ctx.device))
                out = predict(SERVED_RECIPE, network.eval(), volume, steps=s.eval_steps,
                              members=eval_members(len(views(SERVED_RECIPE)), s.eval_members), seed=seed)
                cells.put(_key(head, SERVED_RECIPE, seed), {"head": head, "seed": seed, "shift": shift_scores(volume, out["members"])})
        maps = [cells.map_path(cell_key(head, "unet", seed)) for seed in range(s.ensemble_size)]
        maps = [m for m in maps if m.is_file()]
        if maps and cells.get(_key(head, "deep_ensemble", 0)) is None and cells.claim(_key(head, "deep_ensemble", 0)):
            volume = ctx.test_volume(head) if volume is None else volume
            members = [np.load(m)["members"].astype(np.float32) for m in maps]
            for seed, one in enumerate(members):
                cells.put(_key(head, "unet_softmax", seed), {"head": head, "seed": seed, "shift": shift_scores(volume, one)})
            cells.put(_key(head, "deep_ensemble", 0), {"head": head, "seed": 0, "members": len(members),
                                                       "shift": shift_scores(volume, np.concatenate(members))})


def _found(ctx: Context, cells: Cells) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {"head:seed": shift scores}}`` of the cases computed."""
    found: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in (SERVED_RECIPE, *BASELINES)}
    for head in ctx.settings.folds:
        for model in found:
            for seed in range(max(ctx.settings.seeds, ctx.settings.ensemble_size)):
                cell = cells.get(_key(head, model, seed))
                if cell is not None:
                    found[model][f"{head}:{seed}"] = cell["shift"]
    return found


def _at(cases: dict[str, dict[str, Any]], margin: int, score: str) -> dict[str, float]:
    return {c: w[str(margin)][score] for c, w in cases.items() if str(margin) in w}


def compare_margins(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per score and margin: the mean over the cases and, for margins > 0, the paired difference to margin 0."""
    out: dict[str, Any] = {}
    for score in SCORES:
        base = _at(cases, 0, score)
        out[score] = {}
        for margin in MARGINS:
            values = _at(cases, margin, score)
            entry: dict[str, Any] = {"mean": mean_sd(list(values.values()))["mean"], "cases": len(values)}
            if margin:
                diff = paired_difference(values, base)
                entry.update(minus_unshifted=diff, cases_lower=int(np.sum(np.asarray(diff["differences"]) < 0)))
            out[score][str(margin)] = entry
    return out


def _per_head(cases: dict[str, dict[str, Any]], margin: int, score: str) -> dict[str, float]:
    values = _at(cases, margin, score)
    heads = sorted({c.split(":")[0] for c in values})
    return {h: float(np.mean([v for c, v in values.items() if c.startswith(f"{h}:")])) for h in heads}


def _interval(d: dict[str, Any]) -> str:
    return "–" if d is None or d["ci95"] is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}"


def run(ctx: Context) -> Section:
    cells = Cells(ctx)
    compute_cells(ctx, cells, _work, "bench.boundary_shift")
    found = _found(ctx, cells)
    margins = {model: compare_margins(cases) for model, cases in found.items() if cases}
    versus = {b: {score: {str(m): paired_difference(_per_head(found[SERVED_RECIPE], m, score), _per_head(found[b], m, score))
                          for m in MARGINS} for score in SCORES} for b in BASELINES if found[b] and found[SERVED_RECIPE]}
    rows = []
    for model, scores in margins.items():
        for margin in MARGINS:
            row = [model, margin]
            for score in SCORES:
                e = scores[score][str(margin)]
                lower = f", {e['cases_lower']} of {e['cases']} lower" if margin else ""
                row += [fmt(e["mean"]), _interval(e.get("minus_unshifted")) + lower]
            rows.append(row)
    table = md_table(["model", "margin (voxels)", *(h for s in SCORES.values() for h in (s, f"Δ {s} vs margin 0"))], rows)
    vs_rows = [[b, m, *(_interval(versus[b][score][str(m)]) for score in SCORES)] for b in versus for m in MARGINS]
    if vs_rows:
        table += "\n\nServed recipe − baseline, both shifted alike (per-head means, paired over the heads):\n\n"
        table += md_table(["baseline", "margin (voxels)", *(f"Δ {s}" for s in SCORES.values())], vs_rows)
    results = {"boundary_shift": margins, "served_minus_baseline": versus, "served": SERVED_RECIPE, "margins": list(MARGINS),
               "iterations": ctx.settings.iterations, "cases": {m: sorted(c) for m, c in found.items()},
               "trains": "nothing: the run folder's saved networks and U-Net maps, sampled again"}
    return Section("boundary_shift", finite(results), table, [])


if __name__ == "__main__":
    raise SystemExit(module_main(_work, "boundary_shift"))
