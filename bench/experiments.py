"""Issue-10 design experiments next to the protocol's MedSegDiff: same folds, seeds, iterations and evaluation.

``medsegdiff_eps`` (the paper's ε objective), ``medsegdiff_v`` (v objective) and ``medsegdiff_fused_skips``
(decoder skips carry mask + fused image features) and ``medsegdiff_guided`` against ``medsegdiff`` (x0 objective,
mask-encoder skips), with the size-matched U-Net (softmax and MC-dropout) of the same seeds as reference — the protocol's cells
(``bench.protocol.run_cell``), computed for seeds ``0 .. BENCH_EXPERIMENT_SEEDS - 1`` (default 1) and kept in
the run folder, so that a later full protocol run with ``BENCH_EXPERIMENTS=1`` reuses them; further seeds of a
variant that a run already computed (``BENCH_CELLS=medsegdiff_triplanar:1,…``) count too; ``BENCH_PARTIAL=1``
summarises the cells found and trains nothing (``not_measured`` lists the variants without any). Reported per
variant: Dice, HD95 (after the largest-component step too), AUROC of the entropy for wrong voxels within 6 mm,
member diversity, and the paired per-head difference to ``medsegdiff`` (same seeds) with a 95 % interval.
"""

from __future__ import annotations

import os
from typing import Any

from .context import Context
from .models import EXPERIMENTS, MEMBERS_PER_VIEW
from .protocol import Cells, cell_key, fold_data, run_cell, run_workers, worker_count
from .protocol_report import RELIABILITY_REGIONS, format_difference, plot_reliability
from .report import Section, finite, md_table
from .settings import partial_run
from .stats import mean_sd, paired_difference

__all__ = ["VARIANTS_COMPARED", "METRICS", "run", "compare"]

VARIANTS_COMPARED = ("medsegdiff", *EXPERIMENTS, "unet")
"""The variants' cells; ``unet`` (the size-matched U-Net, softmax) also gives the ``mc_dropout`` row."""
METRICS = ("dice", "hd95_mm", "dice_lcc", "hd95_lcc_mm", "auroc", "auroc_6mm", "disagreement_fraction", "pairwise_dice")


def _metric(cell: dict[str, Any], name: str) -> float | None:
    return cell.get(name, (cell.get("diversity") or {}).get(name))


def compare(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """``{variant: {head: [cell per seed]}}`` → per variant mean ± sd of :data:`METRICS` and the paired
    per-head difference to ``medsegdiff`` (heads averaged over the seeds both have)."""
    def per_head(variant: str, metric: str, other: str | None = None) -> dict[str, float | None]:
        out = {}
        for head, cs in cells[variant].items():
            shared = {c.get("seed") for c in cells.get(other, {}).get(head, [])} if other else None
            out[head] = mean_sd([_metric(c, metric) for c in cs if shared is None or c.get("seed") in shared])["mean"]
        return out

    out: dict[str, Any] = {}
    for variant, by_head in cells.items():
        entry: dict[str, Any] = {m: mean_sd([_metric(c, m) for cs in by_head.values() for c in cs]) for m in METRICS}
        entry["per_head_dice"] = per_head(variant, "dice")
        entry["per_head_dice_lcc"] = per_head(variant, "dice_lcc")
        entry["per_head_hd95_lcc_mm"] = per_head(variant, "hd95_lcc_mm")
        if variant != "medsegdiff":
            entry["minus_medsegdiff"] = {m: paired_difference(per_head(variant, m, "medsegdiff"),
                                                              per_head("medsegdiff", m, variant))
                                         for m in ("dice", "dice_lcc", "auroc_6mm", "disagreement_fraction")}
        out[variant] = entry
    return out


def run(ctx: Context) -> Section:
    s = ctx.settings
    seeds = int(os.environ.get("BENCH_EXPERIMENT_SEEDS", "1"))
    if not 1 <= seeds <= s.seeds:
        raise ValueError(f"BENCH_EXPERIMENT_SEEDS must be 1..{s.seeds} (the protocol's seeds), got {seeds}")
    store = Cells(ctx)
    wanted = ",".join(f"{v}:{seed}" for v in VARIANTS_COMPARED for seed in range(seeds))
    workers = worker_count(ctx)
    partial = partial_run()  # summarise, train nothing
    if workers > 1 and not partial:
        # the workers' cell plan must hold the experiments
        run_workers(ctx, store, workers, only=wanted, extra_env={"BENCH_EXPERIMENTS": "1"})
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {v: {} for v in VARIANTS_COMPARED}
    for head in s.folds:
        data = None
        for variant in VARIANTS_COMPARED:
            for seed in range(s.seeds):  # the requested seeds, and any further seed a run already computed
                cell = store.get(cell_key(head, variant, seed))
                if cell is None and seed < seeds and not partial:
                    data = data or fold_data(ctx, head)
                    cell = run_cell(ctx, store, head, variant, seed, data)
                if cell is not None:
                    cells[variant].setdefault(head, []).append(cell)
    missing = [variant for variant, by_head in cells.items() if not by_head]
    cells = {variant: by_head for variant, by_head in cells.items() if by_head}
    if "unet" in cells:
        cells["mc_dropout"] = {head: [c["mc_dropout"] for c in cs] for head, cs in cells["unet"].items()}
    summary = compare(cells)
    rows = [[variant, *(e[m]["mean"] for m in METRICS), format_difference(e.get("minus_medsegdiff", {}).get("dice"))]
            for variant, e in summary.items()]
    table = md_table(["variant", *METRICS, "Δ Dice vs medsegdiff (95 % CI, per head)"], rows)
    results = {
        "experiments": summary,
        "not_measured": missing,
        "seeds": seeds,
        "seeds_per_variant": {variant: max((len(cs) for cs in by_head.values()), default=0)
                              for variant, by_head in cells.items()}, "folds": list(s.folds), "iterations": s.iterations,
        "evaluation": f"DDIM {s.eval_steps} steps x {s.eval_members} members ({MEMBERS_PER_VIEW} per view for several views; the protocol's)",
        "quick_note": "QUICK MODE: tiny settings; numbers mean nothing" if s.quick else None,
    }
    figures = [plot_reliability(ctx, cells, region, f"reliability_experiments_{region}.png") for region in RELIABILITY_REGIONS]
    return Section("experiments", finite(results), table, [f for f in figures if f])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["experiments"]))
