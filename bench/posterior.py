"""Is the ensemble a posterior? The protocol's saved networks, sampled again with other DDIM settings.

For every saved network of a held-out head (:data:`MODELS_SWEPT`, seeds below ``posterior_seeds``), the whole
test head is sampled with each (steps, eta) of ``Settings.posterior_sweep`` and judged twice:
``soft`` (each member's probabilities as the sampler gives them, the infer task's fusion) and ``hard`` (each member
reduced to its own segmentation, the argmax, before the mean: the paper's ensemble of sampled masks, whose
uncertainty is member disagreement only). Reported: Dice, HD95 after the largest component, AUROC of the entropy
for wrong voxels over the head and within 6 mm of the surface, the share of the entropy that is member
disagreement, mean pairwise Dice between members, and seconds per head. One JSON per (head, model, seed, steps,
eta) under ``<out>/cells``; ``BENCH_WORKERS`` processes share them; ``BENCH_PARTIAL=1`` summarises what is there.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .context import Context
from .judge import judge
from .models import MEMBERS_PER_VIEW, SERVED_RECIPE, build, eval_members, predict, views
from .protocol import SAVED_MODELS, Cells, cell_key, compute_cells, module_main
from .report import Section, finite, md_table
from .stats import mean_sd

__all__ = ["MODELS_SWEPT", "hard_members", "run"]

MODELS_SWEPT = ("medsegdiff", *SAVED_MODELS)
"""The axial x0 network, the ε and v objectives (which may need more steps) and the three-view network."""
SERVED_SWEPT = ("medsegdiff_triplanar_guided", SERVED_RECIPE)
"""Swept with ``posterior_served_seeds`` seeds (the others: ``posterior_seeds``): the served recipe (MSE + soft
Dice since stop 29), whose default steps the sweep decides, and the same recipe with MSE alone."""
METRICS = ("dice", "hd95_lcc_mm", "auroc", "auroc_6mm", "disagreement_fraction", "pairwise_dice")


def hard_members(members: np.ndarray) -> np.ndarray:
    """Member class distributions (N, K, ...) → each member's one-hot argmax (its own segmentation)."""
    return (members.argmax(axis=1)[:, None] == np.arange(members.shape[1]).reshape(1, -1, *([1] * (members.ndim - 2)))).astype(np.float32)


def _key(head: str, model: str, seed: int, steps: int, eta: float) -> str:
    return f"{cell_key(head, model, seed)}__posterior_k{steps}_eta{eta:g}"


def _scores(judged: dict[str, Any]) -> dict[str, Any]:
    diversity = judged.get("diversity") or {}
    return {m: judged.get(m, diversity.get(m)) for m in METRICS}


def _evaluate(ctx: Context, cells: Cells, head: str, model: str, seed: int, steps: int, eta: float) -> dict[str, Any]:
    s = ctx.settings
    network = build(model, seed).to(ctx.device)
    network.load_state_dict(torch.load(cells.network_path(cell_key(head, model, seed)), map_location=ctx.device))
    network.eval()
    volume = ctx.test_volume(head)
    members = eval_members(len(views(model)), s.eval_members)
    out = predict(model, network, volume, steps=steps, members=members, seed=seed, eta=eta)
    return {"head": head, "model": model, "seed": seed, "steps": steps, "eta": eta, "seconds": out["seconds"],
            "nfe": out["nfe"], "soft": _scores(judge(volume, out["members"])),
            "hard": _scores(judge(volume, hard_members(out["members"])))}


def _plan(ctx: Context, cells: Cells) -> list[tuple[str, str, int, int, float]]:
    """Every (head, model, seed, steps, eta) of the sweep (whether or not its network was saved)."""
    s = ctx.settings
    return [(head, model, seed, steps, eta) for head in s.folds for model in MODELS_SWEPT
            for seed in range(s.posterior_served_seeds if model in SERVED_SWEPT else s.posterior_seeds)
            for steps, eta in s.posterior_sweep]


def _work(ctx: Context, cells: Cells) -> None:
    for head, model, seed, steps, eta in _plan(ctx, cells):
        key = _key(head, model, seed, steps, eta)
        saved = cells.network_path(cell_key(head, model, seed)).is_file()
        if saved and cells.get(key) is None and cells.claim(key):
            print(f"[bench] posterior worker {os.getpid()}: {key}", flush=True)
            cells.put(key, _evaluate(ctx, cells, head, model, seed, steps, eta))


def run(ctx: Context) -> Section:
    cells = Cells(ctx)
    compute_cells(ctx, cells, _work, "bench.posterior")
    found = [cells.get(_key(*item)) for item in _plan(ctx, cells)]
    found = [f for f in found if f is not None]
    rows, summary = [], {}
    groups = sorted({(f["model"], f["steps"], f["eta"]) for f in found}, key=lambda g: (MODELS_SWEPT.index(g[0]), g[1], g[2]))
    for model, steps, eta in groups:
        items = [f for f in found if (f["model"], f["steps"], f["eta"]) == (model, steps, eta)]
        for kind in ("soft", "hard"):
            entry = {m: mean_sd([f[kind][m] for f in items]) for m in METRICS}
            entry["per_head_dice"] = {f"{f['head']}/s{f['seed']}": f[kind]["dice"] for f in items}
            entry["seconds"] = float(np.mean([f["seconds"] for f in items]))
            entry["cases"] = len(items)
            summary[f"{model} k{steps} eta{eta:g} {kind}"] = entry
            rows.append([model, steps, eta, kind, len(items), *(entry[m]["mean"] for m in METRICS), entry["seconds"]])
    table = md_table(["model", "DDIM steps", "eta", "members", "cases", *METRICS, "s / head"], rows)
    results = {"posterior": summary, "sweep": [list(x) for x in ctx.settings.posterior_sweep],
               "members": ctx.settings.eval_members, "members_per_view": MEMBERS_PER_VIEW,
               "quick_note": "QUICK MODE: tiny settings; numbers mean nothing" if ctx.settings.quick else None}
    return Section("posterior", finite(results), table)


if __name__ == "__main__":
    raise SystemExit(module_main(_work, "posterior"))
