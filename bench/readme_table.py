"""Regenerate the README's numbers section from ``bench/results/latest.json`` (after ``make bench``).

    .venv/bin/python -m bench.readme_table [--json bench/results/latest.json] [--readme README.md]

Replaces the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->``. Every claim names its measured
figure and the baseline it is compared with; rows where MedSegDiff is behind are marked **behind**. The targets
table comes from ``bench.readme_targets``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .readme_cells import delta, fmt, pm, results, table
from .readme_targets import all_targets

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def render(report: dict[str, Any]) -> str:
    """The README section for ``latest.json``; a section the run has not measured yet is listed as pending."""
    if "protocol" not in report:
        raise ValueError("latest.json has no protocol section: run `make bench` (the full run) first")
    p, env = report["protocol"], report.get("environment", {})
    lines = [
        f"From `make bench` ({report.get('mode')} mode) on {env.get('cpu_count')} CPU core(s) ({env.get('cpu_model')}), "
        f"device {report.get('device')}, torch {report.get('torch')}; full tables in "
        "[`bench/results/latest.md`](bench/results/latest.md). **Templates / single subjects are smoother and more "
        "alike than clinical scans: absolute scores are optimistic.**",
        "",
        f"Protocol: leave-one-head-out over {', '.join(f['test'] for f in p['folds'])} (train on the others); every "
        f"model {p['iterations']} iterations, batch {p['batch_size']}, {p['optimizer']}; {p['seeds']} seeds "
        f"({p['unet_seeds']} for the U-Net: the deep ensemble); MedSegDiff sampled with {p['diffusion_inference']}. "
        "Mean ± sd over folds x seeds; Δ = MedSegDiff − baseline, per test head, 95 % t-interval over the heads; "
        "LCC = after keeping the largest connected component (the app's default post-processing). "
        "Validation curves: `bench/results/validation_curves.png`.",
        "",
    ]
    if p.get("partial"):
        gone = p["partial"]["cells_missing"]
        lines += [f"**Partial run: {p['partial']['cells_planned'] - len(gone)} of {p['partial']['cells_planned']} "
                  f"(test head, model, seed) cells finished; missing: {', '.join(gone)}.** Means below are over the "
                  "finished cells; paired differences over the heads both models have.", ""]
    rows = [[name, pm(b["dice"]), pm(b["hd95_mm"]), delta(b.get("medsegdiff_minus_this_dice")),
             pm(b.get("dice_lcc", {})), pm(b.get("hd95_lcc_mm", {}))]
            for name, b in report["baselines"].items()]
    lines += table(["model", "Dice", "HD95 mm", "Δ Dice (MedSegDiff − this)", "Dice LCC", "HD95 LCC mm"], rows) + [""]
    rows = []
    for name, u in report["uncertainty"].items():
        div = u.get("diversity") or {}
        rows.append([name, fmt(u["auroc"]), fmt(u["auroc_6mm"]), fmt(u["auprc"]), fmt(u["ece_fg"]), fmt(u["brier"]),
                     fmt(u["nll"]), fmt(div.get("pairwise_dice")), fmt(div.get("ged")), fmt(div.get("disagreement_fraction")),
                     delta(u.get("medsegdiff_minus_this_auroc_6mm"))])
    lines += table(["uncertainty", "AUROC head", "AUROC ≤6 mm", "AUPRC", "ECE fg", "Brier fg", "NLL fg",
                     "pairwise Dice", "GED", "MI / H", "Δ AUROC ≤6 mm"], rows) + [""]
    lines += _experiments(report) + _posterior(report) + _tissue(report) + _sampling(report) + _active_learning(report) + _interactive(report)
    lines += ["**Claims, each with its figure and baseline:**", *_claims(report), ""]
    lines += ["**Targets of the open issues (10, 11, 13), met or not:**", "",
              *table(["target", "measured", "met"], all_targets(report)), ""]
    return "\n".join(lines)


def _experiments(report: dict[str, Any]) -> list[str]:
    section = results(report, "experiments")
    if not section:
        return ["Design experiments (ε objective, fused skips): **pending** — not measured in this run yet.", ""]
    rows = []
    seeds = section.get("seeds_per_variant", {})
    for variant, e in section["experiments"].items():
        diffs = e.get("minus_medsegdiff", {})
        rows.append([variant, str(seeds.get(variant, section["seeds"])), pm(e["dice"]), pm(e["hd95_mm"]),
                     pm(e["dice_lcc"]), pm(e["hd95_lcc_mm"]), fmt(e["auroc"]["mean"]), fmt(e["auroc_6mm"]["mean"]),
                     fmt(e["disagreement_fraction"]["mean"]), delta(diffs.get("dice")), delta(diffs.get("auroc_6mm")),
                     delta(diffs.get("disagreement_fraction"))])
    gone = section.get("not_measured") or []
    note = [f"Not measured in this run: {', '.join(gone)}.", ""] if gone else []
    return [f"Design experiments (issue 10), the protocol's folds and training, the seeds listed per variant "
            f"(per-head Δ to `medsegdiff` over the seeds both have, 95 % interval over the heads; {section['evaluation']}):", "",
            *table(["variant", "seeds", "Dice", "HD95 mm", "Dice LCC", "HD95 LCC mm", "AUROC head", "AUROC ≤6 mm",
                     "MI / H", "Δ Dice", "Δ AUROC ≤6 mm", "Δ MI / H"], rows), "", *note,
            "Reliability diagrams: " + ", ".join(f"`bench/results/{f}`" for f in
                                                 report["sections"]["experiments"].get("figures", [])) +
            " (over predicted ∪ reference brain, `_fg`: below p = 0.5 only missed reference voxels are in that region, "
            "so the observed rate there is 1 by construction; `_6mm`: the band around the surface, drawn for cells "
            "that store it). The protocol section draws `reliability_fg.png` / `reliability_6mm.png` for every "
            "method, baselines included, when it runs.", ""]


def _posterior(report: dict[str, Any]) -> list[str]:
    section = results(report, "posterior")
    if not section:
        return ["Sampler sweep (steps x eta, soft and hard members): **pending** — not measured in this run yet.", ""]
    rows = []
    for key, e in section["posterior"].items():
        model, steps, eta, kind = key.split()
        rows.append([model, steps[1:], eta[3:], kind, str(e["cases"]), fmt(e["dice"]["mean"]), fmt(e["hd95_lcc_mm"]["mean"]),
                     fmt(e["auroc"]["mean"]), fmt(e["auroc_6mm"]["mean"]), fmt(e["disagreement_fraction"]["mean"]),
                     fmt(e["pairwise_dice"]["mean"]), fmt(e["seconds"])])
    return [f"Is the ensemble a posterior? The design experiments' saved networks (seed 0 of each held-out head unless "
            f"more are listed), the whole held-out head sampled again with {section['members']} members per DDIM "
            f"setting ({section.get('members_per_view', 2)} per view for the three-view networks); `soft`: the members as the sampler gives them (the infer task), `hard`: each member reduced to "
            "its own segmentation before the mean (the paper's ensemble of sampled masks, whose uncertainty is member "
            "disagreement only). Means over the cases (heads x seeds):", "",
            *table(["model", "DDIM steps", "eta", "members", "cases", "Dice", "HD95 LCC mm", "AUROC head",
                     "AUROC ≤6 mm", "MI / H", "pairwise Dice", "s / head"], rows), ""]


def _tissue(report: dict[str, Any]) -> list[str]:
    section = results(report, "tissue")
    if not section or not section.get("tissue"):
        return ["Tissue task across templates: **pending** — not measured in this run yet.", ""]
    t, classes = section["tissue"], ("csf", "gm", "wm", "mean")
    rows = [[m, str(e["cases"]), *(pm(e[c]) for c in classes)] for m, e in t.items()]
    rows += [[f"Δ {model} − {key[3:]}", "", *(delta(d[c]) for c in classes)]
             for model, entry in t.items() for key, d in entry.items() if key.startswith("vs_")]
    return [f"Tissue (CSF / GM / WM) on a template never trained on: each of {' and '.join(f[1] for f in section['folds'])} "
            f"held out in turn, {section['iterations']} iterations, {section['seeds']} seeds, {section['sampler']} "
            f"(bench `tissue`; {section['data_note']}). Dice on the held-out template's grid, mean ± sd over folds x "
            "seeds; Δ over the (fold, seed) cases, 95 % interval:", "",
            *table(["model", "cases", "Dice CSF", "Dice GM", "Dice WM", "Dice mean"], rows), ""]


def _sampling(report: dict[str, Any]) -> list[str]:
    s = report.get("sampling")
    if s is None:
        return ["Sampling cost (DDPM-1000 vs DDIM on the same slices): **pending** — not measured in this run yet.", ""]
    ddim = {r["steps"]: r for r in s["ddim"]}
    rows = [[f"DDIM {k} x {r['members']}, members batched", fmt(r["seconds_median"], 3), fmt(r["dice_mean"]),
             str(r["member_evaluations_counted"])] for k, r in sorted(ddim.items())]
    rows.append([f"DDPM {s['ddpm']['steps']} x {s['ddpm']['members']}, members batched", fmt(s["ddpm"]["seconds_median"], 1),
                 fmt(s["ddpm"]["dice_mean"]), str(s["ddpm"]["member_evaluations_counted"])])
    lines = [f"Sampling on {len(s['slices'])} held-out Colin27 slices ({s['model']}):", ""]
    lines += table(["sampler (same slices, measured)", "s / slice", "Dice", "member evaluations (hook)"], rows)
    lines += ["", f"Speed-up: sampler x{s['speedup_sampler']:.1f} and batching x{s['speedup_batching']:.2f}, both measured; "
              f"their product x{s['speedup_original_protocol_derived']:.0f} (the original chains one after another) is derived.", ""]
    diversity = s.get("diversity") or []
    if diversity:
        rows = [[str(d["steps"]), str(d["eta"]), fmt(d["dice_mean"]), fmt(d["member_pairwise_dice"]), fmt(d["ged"]),
                 fmt(d["disagreement_fraction"])] for d in diversity]
        lines += ["Member diversity by sampler setting (same slices):", ""]
        lines += table(["DDIM steps", "eta", "Dice", "pairwise Dice", "GED", "MI / H"], rows) + [""]
    return lines


def _active_learning(report: dict[str, Any]) -> list[str]:
    al = report.get("active_learning")
    if al is None:
        return ["Active learning: **pending** — not measured in this run yet.", ""]
    final = {n: r[-1] for n, r in al["per_round"].items()}
    return [f"Active learning ({al['seeds']} seeds, Dice on Colin27 after the last round): "
            + "; ".join(f"{n} {pm(r)}" for n, r in final.items())
            + (". Uncertainty beats both random baselines by more than the spread over seeds."
               if al["uncertainty_beats_both_random_baselines"]
               else ". **Uncertainty does not beat random / foreground-aware random beyond the spread over seeds.**"), ""]


def _interactive(report: dict[str, Any]) -> list[str]:
    section = results(report, "interactive")
    if not section:
        return ["Interactive correction (simulated clicks on held-out heads): **pending** — not measured in this run yet.", ""]
    rows = []
    for head, r in section["per_head"].items():
        for method, m in r["methods"].items():
            rows.append([head, method, *(fmt(v) for v in m["dice"]), fmt(m["dice_auc"]), fmt(m["seconds_per_interaction"], 2)])
            painted = m["painted_ball"]
            rows.append([head, f"painted ball into {method}'s label", *(fmt(v) for v in painted["dice"]),
                         fmt(painted["dice_auc"]), "–"])
    clicks = section["clicks"]
    methods = "; ".join(f"`{k}`: {v}" for k, v in section.get("methods", {}).items())
    seeds = section.get("seeds", 1)
    return [f"Interactive correction: up to {clicks} simulated clicks at the centre of the largest error, on each "
            f"held-out head with its fold's networks, mean over {seeds} seed(s) ({methods}; each clicked with balls of the "
            f"radius named; painted ball: each click's ball painted into that method's own automatic label, no model; "
            f"{section['sampler']}):", "",
            *table(["head", "method", *[f"Dice {c}" for c in range(clicks + 1)], "AUC", "s / interaction"], rows), ""]


def _claims(report: dict[str, Any]) -> list[str]:
    u, b, s = report["uncertainty"], report["baselines"], report.get("sampling")
    ours = u["medsegdiff"]
    diffusion = report["protocol"].get("diffusion_models", ["medsegdiff"])
    best_auroc = max((n for n in u if n not in diffusion), key=lambda n: u[n]["auroc_6mm"] or 0)
    paired = u[best_auroc].get("medsegdiff_minus_this_auroc_6mm") or {}
    best_ece = min((n for n in u if n != "medsegdiff"), key=lambda n: u[n]["ece_fg"] if u[n]["ece_fg"] is not None else 9)
    d = b["unet"].get("medsegdiff_minus_this_dice", {})
    return [
        f"- accuracy: Dice {pm(b['medsegdiff']['dice'])} vs size-matched U-Net {pm(b['unet']['dice'])}, Δ {delta(d)}.",
        f"- \"marks the wrong regions\": AUROC within 6 mm {fmt(ours['auroc_6mm'])} vs the best non-diffusion model "
        f"({best_auroc}) {fmt(u[best_auroc]['auroc_6mm'])}, paired Δ {delta(paired)}"
        + (" — a tie: not ahead." if paired.get("verdict") == "tie" else "."),
        f"- \"calibrated\": ECE over predicted ∪ reference brain {fmt(ours['ece_fg'])} vs the best baseline ({best_ece}) "
        f"{fmt(u[best_ece]['ece_fg'])}" + (" — **behind**." if (ours["ece_fg"] or 9) > (u[best_ece]["ece_fg"] or 9) else "."),
        (f"- \"faster\": x{s['speedup_sampler']:.1f} from the sampler (DDIM vs DDPM-{s['ddpm']['steps']}, measured), "
         f"x{s['speedup_batching']:.2f} from batching members (the original could batch too), same slices."
         if s else "- \"faster\": pending (sampling cost not measured in this run yet)."),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    section = render(json.loads(args.json.read_text()))
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(f"{head}{START}\n{section}\n{END}{tail}")
    print(f"updated {args.readme} from {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
