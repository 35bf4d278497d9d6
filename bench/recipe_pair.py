"""The served recipe against the one it replaced, and each candidate against the served recipe, paired over the
(held-out head, seed) cases both have.

Reads the run folder's protocol cells (``BENCH_OUT``; e.g. ``bench/results/iter2400`` with
``BENCH_ITERATIONS=2400``, the committed model's budget) of :data:`~bench.models.SERVED_RECIPE`, of
:data:`PREVIOUS_RECIPE` and of the :data:`CANDIDATES` and trains nothing. Reported per metric: each recipe's mean over the cases, the mean of
the per-case differences (served − previous) with a 95 % t-interval over the cases, how many cases are lower, and
the per-head means of each recipe. The cases are (head, seed) pairs: a seed's network of one fold is trained
apart from the others, so seeds of one head are separate cases of that fold (the protocol's per-head interval
averages them first; both are in the JSON).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .context import Context
from .models import SERVED_RECIPE
from .protocol import Cells, cell_key
from .readme_cells import fmt
from .report import Section, finite, md_table
from .stats import mean_sd, paired_difference

__all__ = ["PREVIOUS_RECIPE", "CANDIDATES", "METRICS", "pair_cells", "run"]

PREVIOUS_RECIPE = "medsegdiff_triplanar_guided"
"""The committed model's recipe before the Dice term (MSE alone)."""
CANDIDATES = ("medsegdiff_triplanar_guided_dice_shift",)
"""Recipes measured against the served one (each only where the run folder has its cells): the served recipe
with the label's boundary moved one voxel out or in while training (``bench.models.BOUNDARY_SHIFTS``)."""
METRICS = {
    "dice_lcc": "Dice (largest component)",
    "hd95_lcc_mm": "HD95 mm (largest component)",
    "auroc": "uncertainty AUROC, head",
    "auroc_6mm": "AUROC within 6 mm",
    "disagreement_fraction": "member disagreement / predictive entropy",
    "ece_fg": "ECE (foreground)",
}
"""Cell metrics compared (``disagreement_fraction`` is under the cell's ``diversity``)."""


def _value(cell: dict[str, Any], metric: str) -> float | None:
    return cell.get(metric, (cell.get("diversity") or {}).get(metric))


def pair_cells(served: dict[str, dict[str, Any]], previous: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{case: cell}`` of each recipe (case ``head:seed``) → per metric the paired comparison over the cases both
    have (``paired_difference`` of served − previous, the count of cases lower, the means) and per head the means."""
    cases = sorted(set(served) & set(previous))
    heads = sorted({c.split(":")[0] for c in cases})
    out: dict[str, Any] = {"cases": cases, "metrics": {}}
    for metric in METRICS:
        a = {c: _value(served[c], metric) for c in cases}
        b = {c: _value(previous[c], metric) for c in cases}
        diff = paired_difference(a, b)
        per_head = {h: {"served": mean_sd([a[c] for c in cases if c.startswith(f"{h}:")])["mean"],
                        "previous": mean_sd([b[c] for c in cases if c.startswith(f"{h}:")])["mean"]} for h in heads}
        out["metrics"][metric] = {
            "served": mean_sd(list(a.values())), "previous": mean_sd(list(b.values())), "served_minus_previous": diff,
            "cases_lower": int(np.sum(np.asarray(diff["differences"]) < 0)), "per_head": per_head,
        }
    return out


def _table(paired: dict[str, Any], reference: str, recipe: str) -> str:
    rows = []
    for metric, name in METRICS.items():
        m = paired["metrics"][metric]
        d = m["served_minus_previous"]
        interval = "–" if d["ci95"] is None else f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}"
        change = "–" if d["mean"] is None else f"{d['mean']:+.3f}"
        rows.append([name, fmt(m["previous"]["mean"]), fmt(m["served"]["mean"]), change, interval,
                     f"{m['cases_lower']} of {len(paired['cases'])}"])
    return md_table([f"metric ({len(paired['cases'])} cases)", reference, recipe, "Δ", "95 % interval", "cases lower"], rows)


def run(ctx: Context) -> Section:
    store = Cells(ctx)
    found: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in (SERVED_RECIPE, PREVIOUS_RECIPE, *CANDIDATES)}
    for head in ctx.settings.folds:
        for seed in range(ctx.settings.seeds):
            for recipe, cells in found.items():
                cell = store.get(cell_key(head, recipe, seed))
                if cell is not None:
                    cells[f"{head}:{seed}"] = cell
    paired = pair_cells(found[SERVED_RECIPE], found[PREVIOUS_RECIPE])
    table = _table(paired, PREVIOUS_RECIPE, SERVED_RECIPE)
    candidates = {c: pair_cells(found[c], found[SERVED_RECIPE]) for c in CANDIDATES if found[c]}
    for candidate, pair in candidates.items():  # "served" is the candidate here, "previous" the served recipe
        table += f"\n\nCandidate against the served recipe:\n\n{_table(pair, SERVED_RECIPE, candidate)}"
    results = {"recipe_pair": paired, "served": SERVED_RECIPE, "previous": PREVIOUS_RECIPE,
               "candidates": candidates, "iterations": ctx.settings.iterations,
               "trains": "nothing: the run folder's cells only"}
    return Section("recipe_pair", finite(results), table, [])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["recipe_pair"]))
