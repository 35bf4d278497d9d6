"""The open issues' targets, each with its measured figure and whether it is met (the README's targets table).

Every row is ``[target, measured, met]``; ``met`` is "yes", "**no**" or "–" when the run has not measured it.
"""

from __future__ import annotations

from typing import Any

from .models import SERVED_RECIPE
from .readme_cells import delta, fmt, met, results

__all__ = ["SERVED_RECIPE", "TISSUE_RECIPES", "UNCERTAINTY_BASELINES", "all_targets", "acceptance_targets",
           "interactive_targets", "request_target", "served_targets", "shifted_targets", "targets", "tissue_target"]

UNCERTAINTY_BASELINES = ("unet_softmax", "mc_dropout", "deep_ensemble")
"""The uncertainty baselines issue 11 names (the plain segmenter is the no-diffusion ablation)."""



TISSUE_RECIPES = ("medsegdiff_dice", "medsegdiff")
"""The tissue target is judged on the first of these the run measured: the multi-class recipe with the Dice term
(``DiffusionConfig.dice_weight``), else the plain one."""


def tissue_target(report: dict[str, Any]) -> list[str]:
    t = (results(report, "tissue") or {}).get("tissue") or {}
    model = next((m for m in TISSUE_RECIPES if (t.get(m) or {}).get("vs_unet", {}).get("csf")), None)
    if model is None:
        return ["tissue CSF Dice ≥ the U-Net's", "not measured in this run", "–"]
    d = t[model]["vs_unet"]["csf"]
    return [f"tissue CSF Dice ≥ the U-Net's (two templates, each held out; mean over folds x seeds; {model})",
            f"{fmt(t[model]['csf']['mean'])} vs {fmt(t['unet']['csf']['mean'])}: Δ {delta(d)}",
            met(None if d.get("mean") is None else d["mean"] >= 0)
            + (" on the mean; a tie" if d.get("mean", -1) >= 0 and d.get("verdict") == "tie" else "")]


def served_targets(report: dict[str, Any]) -> list[list[str]]:
    """The issue-10 targets for the recipe the committed model follows (the three-view design experiment)."""
    section = results(report, "experiments")
    e = (section or {}).get("experiments", {}).get(SERVED_RECIPE)
    if not e:
        return []
    seeds = section.get("seeds_per_variant", {}).get(SERVED_RECIPE, section["seeds"])
    name = f"{SERVED_RECIPE} (the committed model's recipe; {seeds} seed(s), largest component as the app)"
    dice, hd95 = e["per_head_dice_lcc"], e["per_head_hd95_lcc_mm"]

    auroc, band, share = e["auroc"]["mean"], e["auroc_6mm"]["mean"], e["disagreement_fraction"]["mean"]
    return [
        [f"{name}: held-out Dice ≥ 0.95 on every head", ", ".join(f"{h} {v:.3f}" for h, v in dice.items()),
         met(min(dice.values()) >= 0.95)],
        [f"{name}: HD95 ≤ 10 mm on every head", ", ".join(f"{h} {v:.1f}" for h, v in hd95.items()), met(max(hd95.values()) <= 10)],
        [f"{name}: Dice vs the axial protocol network (paired Δ, same seeds)", delta(e.get("minus_medsegdiff", {}).get("dice_lcc")), "–"],
        [f"{name}: uncertainty AUROC ≥ 0.90 over the head", fmt(auroc), met(auroc is not None and auroc >= 0.90)],
        [f"{name}: AUROC ≥ 0.80 within 6 mm of the surface", fmt(band), met(band is not None and band >= 0.80)],
        [f"{name}: member disagreement ≥ 50 % of the predictive entropy", fmt(share), met(share is not None and share >= 0.5)],
    ]


def shifted_targets(report: dict[str, Any]) -> list[list[str]]:
    """The uncertainty targets on the map the infer task shows (bench ``boundary_shift``: the boundary shifted by
    its default margin, 1 voxel), for the recipe the committed model follows."""
    section = results(report, "boundary_shift")
    shifted = ((section or {}).get("boundary_shift") or {}).get(SERVED_RECIPE)
    if not shifted:
        return []
    head, band = shifted["auroc"]["1"], shifted["auroc_6mm"]["1"]
    name = (f"{SERVED_RECIPE}, the uncertainty as the infer task shows it (boundary shifted 1 voxel; "
            f"{head['cases']} cases, {section['iterations']} iterations)")
    return [
        [f"{name}: uncertainty AUROC ≥ 0.90 over the head", f"{fmt(head['mean'])} (unshifted {fmt(shifted['auroc']['0']['mean'])})",
         met(head["mean"] is not None and head["mean"] >= 0.90)],
        [f"{name}: AUROC ≥ 0.80 within 6 mm of the surface", f"{fmt(band['mean'])} (unshifted {fmt(shifted['auroc_6mm']['0']['mean'])})",
         met(band["mean"] is not None and band["mean"] >= 0.80)],
    ]


def acceptance_targets(report: dict[str, Any]) -> list[list[str]]:
    """The issue-10 targets for the committed model itself on FSL's MNI152 head (never trained, tuned or selected
    on), through the infer task; the clicks beside the painted ball."""
    a = results(report, "acceptance")
    if not a:
        return [["committed model on FSL MNI152 (acceptance)", "not measured in this run", "–"]]
    name = "committed model on FSL's MNI152 head (acceptance: never trained on; one template, 1 seed)"

    dice, ball = a.get("dice_per_click") or [], a.get("painted_ball_dice_per_click") or []
    rows = [
        [f"{name}: Dice ≥ 0.95", fmt(a["dice"]), met(a["dice"] >= 0.95)],
        [f"{name}: HD95 ≤ 10 mm", fmt(a["hd95_mm"], 1), met(a["hd95_mm"] is not None and a["hd95_mm"] <= 10)],
        [f"{name}: uncertainty AUROC ≥ 0.90 over the head", fmt(a["uncertainty_auroc_head"]), met(a["uncertainty_auroc_head"] >= 0.90)],
        [f"{name}: AUROC ≥ 0.80 within 6 mm of the surface", fmt(a["uncertainty_auroc_6mm"]), met(a["uncertainty_auroc_6mm"] >= 0.80)],
        [f"{name}: whole head through the infer task ≤ 15 s (2 CPU cores)", f"{a['seconds']:.1f} s", met(a["seconds"] <= 15)],
    ]
    if len(dice) > 1 and len(ball) == len(dice):
        worst = min(d - b for d, b in zip(dice, ball))
        rows += [
            [f"{name}: +3 Dice points after {len(dice) - 1} clicks through the infer task",
             f"{dice[0]:.3f} → {dice[-1]:.3f} ({dice[-1] - dice[0]:+.3f}); painted ball → {ball[-1]:.3f}",
             met(dice[-1] - dice[0] >= 0.03)],
            [f"{name}: ≥ the painted-ball baseline at every click", f"worst {worst:+.4f}", met(worst >= 0)],
        ]
    clicked = a.get("uncertainty_auroc_head_clicks")
    if clicked:
        rows.append([f"{name}: uncertainty AUROC (wrong voxels, head) not worse after the clicks",
                     f"{fmt(clicked['before'])} → {fmt(clicked['after'])}", met(clicked["after"] >= clicked["before"])])
    return rows


def interactive_targets(report: dict[str, Any]) -> list[list[str]]:
    section = results(report, "interactive")
    if not section:
        return [["interactive: +3 Dice points after 5 clicks (held-out heads)", "pending", "–"]]
    heads = section["per_head"]
    rows = []
    for method in next(iter(heads.values()))["methods"]:
        runs = {h: r["methods"][method] for h, r in heads.items()}
        gains = {h: m["dice"][-1] - m["dice"][0] for h, m in runs.items()}  # of the mean curve over seeds
        spread = {h: f" ± {m['dice_gain_sd']:.3f}" if m.get("dice_gain_sd") is not None else "" for h, m in runs.items()}
        worst = {h: min(a - b for run in m.get("per_seed", [m]) for a, b in zip(run["dice"], run["painted_ball"]["dice"]))
                 for h, m in runs.items()}  # the worst click of any seed
        auroc = {h: (m["uncertainty_auroc"]["before"], m["uncertainty_auroc"]["after"]) for h, m in runs.items()}
        painted = {h: m["painted_ball"].get("uncertainty_auroc_after") for h, m in runs.items()}
        seconds = [m["seconds_per_interaction"] for m in runs.values() if m.get("seconds_per_interaction") is not None]
        rows += [
            [f"interactive ({method}): +3 Dice points after 5 clicks over the automatic label (held-out heads)",
             ", ".join(f"{h} {g:+.3f}{spread[h]}" for h, g in gains.items()), "yes" if min(gains.values()) >= 0.03 else "**no**"],
            [f"interactive ({method}): ≥ the painted-ball baseline at every click",
             ", ".join(f"{h} worst {w:+.3f}" for h, w in worst.items()), "yes" if min(worst.values()) >= 0 else "**no**"],
            [f"interactive ({method}): uncertainty AUROC (wrong voxels) not worse after the clicks",
             ", ".join(f"{h} {fmt(a)} → {fmt(b)}" + (f" (painted ball {fmt(painted[h])})" if painted[h] is not None else "")
                       for h, (a, b) in auroc.items()),
             "yes" if all(b is not None and a is not None and b >= a for a, b in auroc.values()) else "**no**"],
            [f"interactive ({method}): ≤ 1 s per interaction on 2 CPU cores (re-sampling + locality rule, in process, "
             "3 mm model grid)", ", ".join(f"{v:.2f} s" for v in seconds) or "–",
             "–" if not seconds else ("yes" if max(seconds) <= 1.0 else "**no**")],
        ]
    return rows + request_target(report)


def request_target(report: dict[str, Any]) -> list[list[str]]:
    """The same target for a whole request of the infer task (bench ``volume``): what the annotator waits for."""
    clicked = (results(report, "volume") or {}).get("volume_interaction") or {}
    if not clicked.get("clicks"):
        return []
    seconds, phases = clicked["seconds_per_interaction"], clicked["phases_mean"]
    measured = (f"{seconds:.2f} s over {clicked['clicks']} clicks (pre {phases['pre']:.2f}, sampling {phases['infer']:.2f}, "
                f"post {phases['post']:.2f}, files {phases['write']:.2f})")
    return [["interactive: ≤ 1 s per click as a whole infer-task request on the 1 mm Colin27 head (2 CPU cores, "
             "no HTTP; resampling to the image grid and writing the files included)", measured,
             "yes" if seconds <= 1.0 else "**no**"]]


def per_head(report: dict[str, Any], model: str, key: str) -> dict[str, float]:
    """Mean over seeds of ``key`` for each test head."""
    out = {}
    for head, by_seed in report["per_fold"][model].items():
        values = [c[key] for c in by_seed.values() if c.get(key) is not None]
        out[head] = sum(values) / len(values) if values else float("nan")
    return out


def targets(report: dict[str, Any]) -> list[list[str]]:
    u, b = report["uncertainty"], report["baselines"]
    ours = u["medsegdiff"]
    dice, hd95 = per_head(report, "medsegdiff", "dice"), per_head(report, "medsegdiff", "hd95_mm")
    disagreement = (ours.get("diversity") or {}).get("disagreement_fraction")
    d = b["unet"].get("medsegdiff_minus_this_dice", {})
    ci = d.get("ci95") or [None, None]
    seconds = report.get("volume_seconds")

    return [
        ["held-out Dice ≥ 0.95 on every head", ", ".join(f"{h} {v:.3f}" for h, v in dice.items()), met(min(dice.values()) >= 0.95)],
        ["HD95 ≤ 10 mm on every head", ", ".join(f"{h} {v:.1f}" for h, v in hd95.items()), met(max(hd95.values()) <= 10)],
        ["Dice ≥ size-matched U-Net (paired Δ ≥ 0 within the interval)", delta(d), met(None if ci[1] is None else ci[1] >= 0)],
        ["uncertainty AUROC (wrong voxels) ≥ 0.90 over the head", fmt(ours["auroc"]), met(None if ours["auroc"] is None else ours["auroc"] >= 0.90)],
        ["AUROC ≥ 0.80 within 6 mm of the surface", fmt(ours["auroc_6mm"]), met(None if ours["auroc_6mm"] is None else ours["auroc_6mm"] >= 0.80)],
        ["AUROC within 6 mm ahead of every uncertainty baseline (U-Net softmax, MC-dropout, deep ensemble; paired Δ "
         "over the heads)", "; ".join(f"{n} {fmt(u[n]['auroc_6mm'])}: Δ {delta(u[n].get('medsegdiff_minus_this_auroc_6mm'))}"
                                      for n in UNCERTAINTY_BASELINES if n in u),
         met(all((u[n].get("medsegdiff_minus_this_auroc_6mm") or {}).get("verdict") == "ahead"
                 for n in UNCERTAINTY_BASELINES if n in u))],
        ["(not a target) the same network without diffusion, its softmax entropy",
         "–" if "plain_segmenter" not in u else
         f"plain_segmenter {fmt(u['plain_segmenter']['auroc_6mm'])}: Δ {delta(u['plain_segmenter'].get('medsegdiff_minus_this_auroc_6mm'))}",
         "–"],
        ["member disagreement ≥ 50 % of the predictive entropy", fmt(disagreement), met(None if disagreement is None else disagreement >= 0.5)],
        ["whole Colin27 head through the infer task ≤ 15 s (2 CPU cores)", "–" if seconds is None else f"{seconds:.1f} s", met(None if seconds is None else seconds <= 15)],
        tissue_target(report),
    ]


def all_targets(report: dict[str, Any]) -> list[list[str]]:
    """Every target row of the README's table, in its order."""
    return (targets(report) + served_targets(report) + shifted_targets(report) + acceptance_targets(report)
            + interactive_targets(report))
