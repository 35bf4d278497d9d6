"""Does widening the uncertainty by a voxel find the wrong voxels better? Each model's cells, margin against none.

Reads the run folder's protocol cells (``BENCH_OUT``) of :data:`~bench.models.SERVED_RECIPE` and of the
uncertainty baselines (the U-Net's softmax, MC-dropout, the deep ensemble) and trains nothing. Every cell carries,
under ``widened``, the AUROC of its model-grid entropy for the wrong voxels after
:func:`~medsegdiff.uncertainty.widen_to_neighbours` with each margin of :data:`~bench.judge.MARGINS` (0: not
widened), over the head and within 6 mm of the reference surface. Reported per model and margin: the mean over the
(head, seed) cases, the paired difference to margin 0 (95 % t-interval over the cases), how many cases are lower,
and, per margin, the served recipe against each baseline widened alike (per-head means paired over the heads).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .context import Context
from .judge import MARGINS
from .models import SERVED_RECIPE
from .protocol import Cells, cell_key
from .readme_cells import fmt
from .report import Section, finite, md_table
from .stats import mean_sd, paired_difference

__all__ = ["BASELINES", "SCORES", "widened_cases", "compare_margins", "run"]

BASELINES = ("unet_softmax", "mc_dropout", "deep_ensemble")
SCORES = {"auroc": "AUROC head", "auroc_6mm": "AUROC ≤ 6 mm"}


def _found(ctx: Context, store: Cells) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {"head:seed": widened scores}}`` of the cells that carry them."""
    s = ctx.settings
    found: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in (SERVED_RECIPE, *BASELINES)}
    for head in s.folds:
        for seed in range(max(s.seeds, s.ensemble_size)):
            served, unet = store.get(cell_key(head, SERVED_RECIPE, seed)), store.get(cell_key(head, "unet", seed))
            for model, cell in ((SERVED_RECIPE, served), ("unet_softmax", unet), ("mc_dropout", (unet or {}).get("mc_dropout"))):
                if cell is not None and "widened" in cell:
                    found[model][f"{head}:{seed}"] = cell["widened"]
        ensemble = store.get(cell_key(head, "deep_ensemble", 0))
        if ensemble is not None and "widened" in ensemble:
            found["deep_ensemble"][f"{head}:0"] = ensemble["widened"]
    return found


def widened_cases(cases: dict[str, dict[str, Any]], margin: int, score: str) -> dict[str, float]:
    """``{case: widened scores}`` → ``{case: score at margin}``."""
    return {c: w[str(margin)][score] for c, w in cases.items() if str(margin) in w}


def compare_margins(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per score and margin: the mean over the cases and, for margins > 0, the paired difference to margin 0."""
    out: dict[str, Any] = {}
    for score in SCORES:
        base = widened_cases(cases, 0, score)
        out[score] = {}
        for margin in MARGINS:
            values = widened_cases(cases, margin, score)
            entry: dict[str, Any] = {"mean": mean_sd(list(values.values()))["mean"], "cases": len(values)}
            if margin:
                diff = paired_difference(values, base)
                entry.update(minus_unwidened=diff, cases_lower=int(np.sum(np.asarray(diff["differences"]) < 0)))
            out[score][str(margin)] = entry
    return out


def _per_head(cases: dict[str, dict[str, Any]], margin: int, score: str) -> dict[str, float]:
    values = widened_cases(cases, margin, score)
    heads = sorted({c.split(":")[0] for c in values})
    return {h: float(np.mean([v for c, v in values.items() if c.startswith(f"{h}:")])) for h in heads}


def run(ctx: Context) -> Section:
    found = _found(ctx, Cells(ctx))
    margins = {model: compare_margins(cases) for model, cases in found.items() if cases}
    versus = {b: {score: {str(m): paired_difference(_per_head(found[SERVED_RECIPE], m, score), _per_head(found[b], m, score))
                          for m in MARGINS} for score in SCORES} for b in BASELINES if found[b] and found[SERVED_RECIPE]}
    rows = []
    for model, scores in margins.items():
        for margin in MARGINS:
            row = [model, margin]
            for score in SCORES:
                e = scores[score][str(margin)]
                d = e.get("minus_unwidened")
                row += [fmt(e["mean"]), "–" if d is None or d["ci95"] is None else
                        f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}, {e['cases_lower']} of {e['cases']} lower"]
            rows.append(row)
    table = md_table(["model", "margin (voxels)", *(h for s in SCORES.values() for h in (s, f"Δ {s} vs margin 0"))], rows)
    vs_rows = [[b, m, *(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}" if d["ci95"] else "–"
                       for d in (versus[b][score][str(m)] for score in SCORES))] for b in versus for m in MARGINS]
    if vs_rows:
        table += "\n\nServed recipe − baseline, both widened alike (per-head means, paired over the heads):\n\n"
        table += md_table(["baseline", "margin (voxels)", *(f"Δ {s}" for s in SCORES.values())], vs_rows)
    results = {"widened": margins, "served_minus_baseline": versus, "served": SERVED_RECIPE, "margins": list(MARGINS),
               "iterations": ctx.settings.iterations, "trains": "nothing: the run folder's cells only"}
    return Section("widened", finite(results), table, [])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["widened"]))
