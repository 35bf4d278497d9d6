"""The leave-one-head-out cells summarised: per-fold per-seed values, baselines, uncertainty, cost, curves."""

from __future__ import annotations

from typing import Any

import numpy as np

from .models import DIFFUSION_MODELS
from .report import md_table, save_figure
from .stats import mean_sd, paired_difference

__all__ = ["UNCERTAINTY_METHODS", "UNCERTAINTY_METRICS", "summarise", "tables", "plot_curves", "pooled_reliability", "plot_reliability", "uncertainty_cells",
           "format_difference", "RELIABILITY_REGIONS"]

UNCERTAINTY_METHODS: dict[str, tuple[str, str | None]] = {
    **{name: (name, None) for name in DIFFUSION_MODELS},
    "plain_segmenter": ("plain_segmenter", None),
    "unet_softmax": ("unet", None),
    "mc_dropout": ("unet", "mc_dropout"),
    "deep_ensemble": ("deep_ensemble", None),
}
"""Uncertainty method → (model of the cells, sub-entry of the cell holding its scores)."""
UNCERTAINTY_METRICS = ("auroc", "auroc_6mm", "auprc", "auprc_6mm", "ece_fg", "ece_6mm", "brier", "nll")
DIVERSITY = ("pairwise_dice", "ged", "disagreement_fraction")


def _cells(results: dict, model: str, sub: str | None, seeds: int) -> dict[str, list[dict[str, Any]]]:
    """{test head: [scores of seeds < ``seeds``]} (the deep ensemble has one cell per head)."""
    out = {}
    for test, by_seed in results[model].items():
        picked = [c for seed, c in sorted(by_seed.items()) if seed < seeds or model == "deep_ensemble"]
        out[test] = [c[sub] if sub else c for c in picked]
    return out


def _per_case(cells: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float | None]:
    return {test: mean_sd([c.get(key) for c in cs])["mean"] for test, cs in cells.items()}


def _all(cells: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    return mean_sd([c.get(key) for cs in cells.values() for c in cs])


def summarise(results: dict, seeds: int) -> dict[str, Any]:
    """What ``latest.json`` carries from the protocol (see ``bench.protocol``)."""
    per_fold = {
        model: {
            test: {
                str(seed): {
                    "dice": c.get("dice"), "hd95_mm": c.get("hd95_mm"),
                    "dice_lcc": c.get("dice_lcc"), "hd95_lcc_mm": c.get("hd95_lcc_mm"),
                    **({"train_seconds": c["train"]["seconds"], "iterations": c["train"]["iterations"],
                        "curve": c["train"]["curve"]} if "train" in c else {}),
                    **({"mc_dropout_dice": c["mc_dropout"]["dice"]} if "mc_dropout" in c else {}),
                }
                for seed, c in by_seed.items()
            }
            for test, by_seed in by_test.items()
        }
        for model, by_test in results.items()
    }
    ours = _cells(results, "medsegdiff", None, seeds)
    ours_dice, ours_auroc = _per_case(ours, "dice"), _per_case(ours, "auroc_6mm")
    ours_dice_lcc = _per_case(ours, "dice_lcc")
    baselines, uncertainty, wall_clock = {}, {}, {}
    dice_models = {m: (m, None) for m in results} | {"mc_dropout": ("unet", "mc_dropout")}
    for name, (model, sub) in dice_models.items():
        cells = _cells(results, model, sub, seeds)
        entry = {"dice": _all(cells, "dice"), "hd95_mm": _all(cells, "hd95_mm"), "per_case_dice": _per_case(cells, "dice"),
                 "dice_lcc": _all(cells, "dice_lcc"), "hd95_lcc_mm": _all(cells, "hd95_lcc_mm"),
                 "per_case_dice_lcc": _per_case(cells, "dice_lcc")}
        if name != "medsegdiff":
            entry["medsegdiff_minus_this_dice"] = paired_difference(ours_dice, entry["per_case_dice"])
            entry["medsegdiff_minus_this_dice_lcc"] = paired_difference(ours_dice_lcc, entry["per_case_dice_lcc"])
        baselines[name] = entry
    for name, (model, sub) in UNCERTAINTY_METHODS.items():
        if model not in results:
            continue
        cells = _cells(results, model, sub, seeds)
        entry = {metric: _all(cells, metric)["mean"] for metric in UNCERTAINTY_METRICS}
        entry["sd"] = {metric: _all(cells, metric)["sd"] for metric in UNCERTAINTY_METRICS}
        diversities = [c["diversity"] for cs in cells.values() for c in cs if c.get("diversity")]
        entry["diversity"] = (
            {k: mean_sd([d[k] for d in diversities])["mean"] for k in DIVERSITY} | {"members": diversities[0]["members"]}
            if diversities else None
        )
        entry["per_case_auroc_6mm"] = _per_case(cells, "auroc_6mm")
        if name != "medsegdiff":
            entry["medsegdiff_minus_this_auroc_6mm"] = paired_difference(ours_auroc, entry["per_case_auroc_6mm"])
        uncertainty[name] = entry
    for model, by_test in results.items():
        trained = [c for by_seed in by_test.values() for c in by_seed.values() if "train" in c]
        if trained:
            wall_clock[model] = {
                "train_seconds": mean_sd([c["train"]["seconds"] for c in trained]),
                "infer_seconds_per_head": mean_sd([c["infer_seconds"] for c in trained]),
                "iterations": trained[0]["train"]["iterations"], "parameters": trained[0]["train"]["parameters"],
            }
    return {
        "per_fold": per_fold,
        "baselines": baselines,
        "uncertainty": uncertainty,
        "wall_clock": wall_clock,
        "dice": {name: b["dice"]["mean"] for name, b in baselines.items()},
        "hd95": {name: b["hd95_mm"]["mean"] for name, b in baselines.items()},
        "uncertainty_auroc": uncertainty["medsegdiff"]["auroc_6mm"],
    }


def _pm(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.3f}" + (f" ± {stat['sd']:.3f}" if stat.get("sd") is not None else "")


def format_difference(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    ci = d.get("ci95")
    return f"{d['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}] {d['verdict']}" if ci else " (1 case)")


def tables(summary: dict[str, Any]) -> str:
    """Accuracy, uncertainty and (second, labelled) wall-clock tables in markdown."""
    rows = [[name, _pm(b["dice"]), _pm(b["hd95_mm"]), format_difference(b.get("medsegdiff_minus_this_dice")),
             _pm(b.get("dice_lcc", {})), _pm(b.get("hd95_lcc_mm", {})), format_difference(b.get("medsegdiff_minus_this_dice_lcc"))]
            for name, b in summary["baselines"].items()]
    text = ("Accuracy, leave-one-head-out (mean ± sd over folds x seeds; Δ = MedSegDiff − model, per-head, 95 % "
            "t-interval; LCC = after keeping the largest connected component, the app's post-processing)\n\n")
    text += md_table(["model", "Dice", "HD95 mm", "Δ Dice", "Dice LCC", "HD95 LCC mm", "Δ Dice LCC"], rows)
    rows = []
    for name, u in summary["uncertainty"].items():
        div = u["diversity"] or {}
        rows.append([name, u["auroc"], u["auroc_6mm"], u["auprc"], u["ece_fg"], u["brier"], u["nll"],
                     div.get("pairwise_dice"), div.get("ged"), div.get("disagreement_fraction"),
                     format_difference(u.get("medsegdiff_minus_this_auroc_6mm"))])
    text += "\n\nUncertainty (errors = voxels the label gets wrong; ECE / Brier / NLL over predicted ∪ reference brain)\n\n"
    text += md_table(["method", "AUROC head", "AUROC ≤6 mm", "AUPRC head", "ECE fg", "Brier fg", "NLL fg",
                      "pairwise Dice", "GED", "MI / H", "Δ AUROC ≤6 mm"], rows)
    rows = [[m, w["iterations"], w["parameters"], _pm(w["train_seconds"]), _pm(w["infer_seconds_per_head"])]
            for m, w in summary["wall_clock"].items()]
    text += "\n\nSecond table — wall clock of the same fixed iterations (shared machine; not a budget-matched comparison)\n\n"
    text += md_table(["model", "iterations", "parameters", "train s", "infer s / head"], rows)
    return text


def plot_curves(ctx, results: dict) -> str:
    """Validation Dice against iteration, mean over folds and seeds, one line per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model, by_test in results.items():
        curves = [c["train"]["curve"] for by_seed in by_test.values() for c in by_seed.values() if c.get("train")]
        curves = [c for c in curves if c]
        if not curves:
            continue
        iterations = [p["iteration"] for p in curves[0]]
        values = np.array([[p["val_dice"] for p in c] for c in curves if len(c) == len(iterations)], dtype=float)
        ax.errorbar(iterations, values.mean(axis=0), yerr=values.std(axis=0), marker="o", capsize=2, label=model)
    ax.set_xlabel("training iteration (cosine schedule)")
    ax.set_ylabel("Dice on test-head slices (monitoring only)")
    ax.set_title("Validation curves, leave-one-head-out (mean ± sd)")
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, ctx.out_dir / "validation_curves.png")


def pooled_reliability(diagrams: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several reliability diagrams (``medsegdiff.evaluation.reliability``, same bins) pooled voxel-weighted:
    per bin the mean probability, the observed rate (NaN for empty bins) and the voxel count."""
    counts = np.array([d["count"] for d in diagrams], dtype=float)
    nan = lambda key: np.array([[np.nan if v is None else v for v in d[key]] for d in diagrams], dtype=float)  # noqa: E731
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.nansum(nan("mean_probability") * counts, axis=0) / total
        rate = np.nansum(nan("observed_rate") * counts, axis=0) / total
    return np.where(total > 0, mean_p, np.nan), np.where(total > 0, rate, np.nan), total


RELIABILITY_REGIONS = {
    "fg": "predicted ∪ reference brain (below p = 0.5 only missed reference voxels are in it: rate 1 by construction)",
    "6mm": "the 6 mm band around the reference surface",
}


def uncertainty_cells(results: dict, seeds: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{uncertainty method: {test head: [its scores per seed]}} of the methods the run has."""
    return {name: _cells(results, model, sub, seeds) for name, (model, sub) in UNCERTAINTY_METHODS.items() if model in results}


def plot_reliability(ctx, methods: dict[str, dict[str, list[dict[str, Any]]]], region: str, filename: str) -> str | None:
    """Reliability diagram over ``region`` (:data:`RELIABILITY_REGIONS`), one line per method of
    ``{method: {head: [cell]}}`` (its cells pooled; cells without that region's diagram are left out)."""
    import matplotlib.pyplot as plt

    key = f"reliability_{region}"
    groups = {name: [c[key] for cs in by_head.values() for c in cs if c.get(key)] for name, by_head in methods.items()}
    groups = {name: diagrams for name, diagrams in groups.items() if diagrams}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for name, diagrams in groups.items():
        mean_p, rate, _ = pooled_reliability(diagrams)
        ax.plot(mean_p, rate, marker="o", markersize=3, label=name)
    ax.set_xlabel("predicted foreground probability (bin mean)")
    ax.set_ylabel("observed foreground rate")
    ax.set_title(f"Reliability, held-out heads, over\n{RELIABILITY_REGIONS[region]}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, ctx.out_dir / filename)
