"""Interactive correction with simulated clicks (CVPR 2025 interactive 3D segmentation challenge style).

On each held-out head, with the leave-one-head-out protocol's networks trained without it, seeds
``0..interactive_seeds - 1`` (saved by the protocol as ``cells/<head>__<model>__s<seed>.pt``, computed here when
missing) of :data:`~bench.models.INTERACTIVE_MODELS`
(``medsegdiff``: RePaint-style conditioning only, axial; ``medsegdiff_triplanar_guided``, the committed model's
recipe: the same plus the marks as guidance channels, trained with simulated clicks, its automatic label sampled
along three views as the infer task does), start from the automatic label, then up to :data:`CLICKS` simulated
clicks, each at the centre (maximum of the distance transform) of the largest 3D error component of the current
label (:func:`medsegdiff.guidance.largest_error_click`): a foreground click on a miss, a background click on a
false positive. The model takes each click as a ball of each of :data:`RADII` model voxels, as the infer task does
(:mod:`medsegdiff.interaction`), and re-samples the slices the ball crosses (a network of three views: along
each view, pooled with the kept slices of each view, as the infer task does); the baseline "painted ball" paints
the same ball into the method's own automatic label without a model. A guided model is also clicked with
:data:`REACH` slices of hints each side of the ball (:func:`medsegdiff.interaction.click_reach_hints`, the infer
task's ``click_reach``, along the error of the automatic label): those slices are re-sampled too. Reported: Dice
after every click, the area under the Dice curve (trapezoid, normalised to [0, 1]), seconds per interaction, and the AUROC of the entropy for
the wrong voxels before / after: each the mean over the seeds (each seed's run under ``per_seed``; the figure
shows seed 0).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medsegdiff.boundary_spread import doubt_like_corrected, spread_along_boundary
from medsegdiff.evaluation import auroc, binary_dice, surface_band
from medsegdiff.inferer import MedSegDiffInferer, output_keys
from medsegdiff.guidance import largest_error_click
from medsegdiff.fusion import probabilities_to_labels
from medsegdiff.interaction import (
    UNKNOWN, KnownRegion, click_balls, click_reach_hints, keep_changes_near_marks,
)
from medsegdiff.sample_model import sample_diffusion_config
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.uncertainty import shown_uncertainty

from .context import Context
from .grid import GridVolume
from .interactive_figure import plot_interaction
from .judge import BAND_MM
from .models import INTERACTIVE_MODELS, MEMBERS_PER_VIEW, SERVED_RECIPE, build, eval_members, guided, train, views
from .protocol import Cells, cell_key, fold_data, run_cell
from .report import Section, finite, md_table
from .settings import SPACING_MM

__all__ = [
    "CLICKS", "RADII", "REACH", "SPREAD", "DOUBT", "MARGIN", "FIGURE_MODEL", "shifted", "method_name", "variants", "fit_views", "dice_auc", "painted_ball",
    "automatic_label", "protocol_network", "refine", "run",
]

CLICKS = 5
RADII = (2, 3)
"""Click ball radii in model voxels (3 mm each) compared, for the model and the painted-ball baseline alike."""
FIGURE_MODEL = SERVED_RECIPE
"""The model the figure shows (the committed sample model's recipe), clicked as the infer task's defaults click
(:data:`FIGURE_RADIUS`, :data:`FIGURE_REACH`)."""
FIGURE_RADIUS = 2
REACH = 8
"""Slices of hints each side of a click's ball (3 mm each) a guided model is also measured with (0: none)."""
FIGURE_REACH = 0
SPREAD = 3
"""Voxels (3 mm each) around a click within which a guided model is also measured with the boundary moved (the
infer task's default ``click_spread``)."""
FIGURE_SPREAD = SPREAD
DOUBT = 1
"""Whether the guided model is also measured with the uncertainty raised on the voxels like the corrected ones
(:func:`medsegdiff.boundary_spread.doubt_like_corrected`; the infer task's default ``click_doubt``)."""
FIGURE_DOUBT = DOUBT
MARGIN = 1
"""Model voxels the uncertainty lets the boundary move (the infer task's default ``uncertainty_margin``,
:func:`medsegdiff.uncertainty.shown_uncertainty`): every AUROC is also reported on that map (``*_shifted``), with
the marked voxels at zero as the infer task shows them."""
SLICE_AXIS = 2


def method_name(model: str, radius: int, reach: int = 0, spread: int = 0, doubt: int = 0) -> str:
    """The table's name of ``model`` clicked with balls of ``radius`` voxels, hints ``reach`` slices on, the
    boundary moved ``spread`` voxels around each click (:func:`medsegdiff.boundary_spread.spread_along_boundary`)
    and, with ``doubt``, the uncertainty raised on the voxels like the corrected ones
    (:func:`medsegdiff.boundary_spread.doubt_like_corrected`)."""
    name = f"{model}, {radius * SPACING_MM:g} mm ball"
    name += f", hints {reach * SPACING_MM:g} mm on" if reach else ""
    name += f", boundary moved {spread * SPACING_MM:g} mm around" if spread else ""
    return name + (", voxels like the corrected flagged" if doubt else "")


def variants(model: str) -> list[tuple[int, int, int, int]]:
    """The (radius, reach, spread, doubt) of each way ``model`` is clicked: hints, the boundary spread and the
    doubt only for a network with guidance channels (the committed model's recipe); ``BENCH_INTERACTIVE_VARIANTS``
    (``model:radius:reach:spread[:doubt]``, comma-separated) picks some instead."""
    chosen = os.environ.get("BENCH_INTERACTIVE_VARIANTS")
    if chosen:
        picked = [item.split(":") for item in chosen.split(",") if item.strip()]
        return [tuple(int(v) for v in [*p[1:], "0"][:4]) for p in picked if p[0] == model]
    reaches = (0, REACH) if guided(model) else (0,)
    spread = [(FIGURE_RADIUS, 0, SPREAD, 0), (FIGURE_RADIUS, 0, SPREAD, DOUBT)] if guided(model) else []
    return [(radius, reach, 0, 0) for radius in RADII for reach in reaches] + spread


def protocol_network(ctx: Context, head: str, model: str, seed: int, data) -> tuple[torch.nn.Module, str]:
    """The protocol's ``model`` of ``seed`` in the fold that holds ``head`` out (computed here, as the protocol
    computes it, when the run folder lacks it; quick mode trains a throw-away network instead)."""
    cells = Cells(ctx)
    path = cells.network_path(cell_key(head, model, seed))
    if not path.is_file() and not ctx.settings.quick:
        run_cell(ctx, cells, head, model, seed, data)
    network = build(model, seed)
    why = "no protocol cell"
    if path.is_file():
        try:
            network.load_state_dict(torch.load(path, map_location="cpu"))
            return network.to(ctx.device).eval(), f"protocol cell {path.name}"
        except RuntimeError:  # saved by a run with another architecture
            why = f"{path.name} holds another architecture"
    images, labels, _, _ = data
    iterations = max(ctx.settings.fallback_model_iterations, 40)  # the OneCycle warm-up needs >= 2 steps
    network = train(model, build(model, seed).to(ctx.device), images, labels, iterations, seed, ctx.device).network
    return network.eval(), f"trained here for {iterations} iterations ({why}): numbers mean nothing"


def fit_views(volume: GridVolume, model: str) -> GridVolume:
    """The test head as the infer task gives it to a network of several views: every axis at least the slice
    size (the slice axis centre-padded with zeros, as ``min_volume_size`` + ``SpatialPadd``); others unchanged."""
    size, depth = volume.image.shape[0], volume.image.shape[2]
    if len(views(model)) == 1 or depth >= size:
        return volume
    pad = ((0, 0), (0, 0), ((size - depth) // 2, size - depth - (size - depth) // 2))
    return dataclasses.replace(volume, image=np.pad(volume.image, pad), label=np.pad(volume.label, pad))


def dice_auc(dice: list[float]) -> float:
    """Area under the Dice-per-click curve (trapezoid), normalised to [0, 1]."""
    return float(np.trapz(dice) / (len(dice) - 1))


def shifted(outputs: dict[str, torch.Tensor], marked: np.ndarray | None = None) -> np.ndarray:
    """The uncertainty the infer task shows of model-grid ``outputs`` (``probs``, ``entropy``): the boundary
    shifted :data:`MARGIN` voxels both ways, the ``marked`` voxels at zero."""
    out = shown_uncertainty(outputs["probs"].cpu(), outputs["entropy"].cpu(), MARGIN)[0, 0].numpy().copy()
    if marked is not None:
        out[marked] = 0.0
    return out


def painted_ball(auto: np.ndarray, reference: np.ndarray, radius: int, entropy: np.ndarray, band: np.ndarray,
                 shown: np.ndarray | None = None) -> dict[str, Any]:
    """The no-model baseline: each click paints a ball of ``radius`` into the label (Dice after each); the
    automatic ``entropy`` with the painted voxels at zero (as the infer task gives marks) scores the wrong voxels
    left after the clicks (``uncertainty_auroc_after``; ``*_shifted``, when given: the automatic result's ``shown``
    map, the boundary shifted, instead): how the AUROC moves when errors are fixed and nothing else changes."""
    painted, dice, marked = auto.copy(), [binary_dice(auto, reference)], np.zeros(auto.shape, dtype=bool)
    for _ in range(CLICKS):
        click = largest_error_click(painted, reference)
        if click is not None:
            ball = click_balls(reference.shape, [click[0]], radius).numpy()
            painted[ball], marked[ball] = click[1], True
        dice.append(binary_dice(painted, reference))
    wrong, out = painted != reference, {"dice": dice, "dice_auc": dice_auc(dice)}
    for suffix, uncertainty in (("", entropy), ("_shifted", shown))[: 1 if shown is None else 2]:
        uncertainty = np.where(marked, 0.0, uncertainty)
        out[f"uncertainty_auroc_after{suffix}"] = auroc(uncertainty, wrong)
        out[f"uncertainty_auroc_after_6mm{suffix}"] = auroc(uncertainty[band], wrong[band])
    return out


def automatic_label(ctx: Context, volume, network: torch.nn.Module, seed: int = 0,
                    slice_views: Sequence[int] = (SLICE_AXIS,)) -> tuple[MedSegDiffInferer, torch.Tensor, dict[str, Any], float]:
    """The automatic label of ``volume`` as the infer task samples it (along each of ``slice_views``, batched as
    the infer task batches): the inferer, the image tensor, the inferer's outputs and the seconds it took."""
    s = ctx.settings
    sampler = EnsembleSampler(sample_diffusion_config(), "ddim", s.eval_steps, eval_members(len(slice_views), s.eval_members))
    inferer = MedSegDiffInferer(sampler, seed=seed, slice_axis=SLICE_AXIS, views=tuple(slice_views))
    image = torch.from_numpy(np.ascontiguousarray(volume.image))[None, None].float().to(ctx.device)
    start = time.perf_counter()
    result = inferer(image, network)
    return inferer, image, result, time.perf_counter() - start


def refine(ctx: Context, volume, network: torch.nn.Module, source: str, seed: int = 0,
           pairs: Sequence[tuple[int, int, int, int]] = ((2, 0, 0, 0),), slice_views: Sequence[int] = (SLICE_AXIS,),
           ) -> dict[tuple[int, int, int, int], dict[str, Any]]:
    """Automatic label (sampled along each of ``slice_views``, as the infer task does for a checkpoint of several
    views), then for each (radius, reach, spread, doubt) of ``pairs`` :data:`CLICKS` simulated clicks, each re-sampling
    the slices its ball and hints cross along each view; the painted-ball baseline of the same radius into this
    automatic label."""
    reference = (volume.label > 0).astype(np.uint8)
    inferer, image, automatic, auto_seconds = automatic_label(ctx, volume, network, seed, slice_views)
    auto = automatic["label"][0, 0].cpu().numpy().astype(np.uint8)
    entropy_before, shown_before = automatic["entropy"][0, 0].cpu().numpy(), shifted(automatic)
    band = surface_band(reference, (SPACING_MM,) * 3, BAND_MM)  # within 6 mm of the reference surface
    runs = {}
    for radius, reach, spread, doubt in pairs:
        run = {"network": source, "automatic_seconds": auto_seconds,
               **_clicks(inferer, image, network, automatic, reference, band, radius, reach, spread, doubt)}
        for suffix, shown in (("", entropy_before), ("_shifted", shown_before)):
            run["uncertainty_auroc"][f"before{suffix}"] = auroc(shown, auto != reference)
            run["uncertainty_auroc"][f"before_6mm{suffix}"] = auroc(shown[band], (auto != reference)[band])
        run["_figure"].update(image=volume.image, reference=reference, auto=auto)
        runs[radius, reach, spread, doubt] = {**run, "painted_ball": painted_ball(auto, reference, radius, entropy_before, band, shown_before)}
    return runs


def _clicks(inferer, image, network, result, reference, band, radius, reach=0, spread=0, doubt=0) -> dict[str, Any]:
    """:data:`CLICKS` clicks of ``radius`` (hints ``reach`` slices on, the boundary moved ``spread`` voxels
    around, with ``doubt`` the voxels like the corrected flagged) from the automatic ``result``: Dice after each,
    seconds, AUROC after (over the volume and over ``band``, the voxels near the reference surface), and of the
    voxels at the maximum uncertainty after the clicks how many are wrong."""
    label = lambda out: out["label"][0, 0].cpu().numpy().astype(np.uint8)  # noqa: E731
    auto = label(result)
    marks = torch.full((1, 1, *reference.shape), UNKNOWN, dtype=torch.long)
    hints = marks.clone()
    current, dice, seconds, clicks = auto.copy(), [binary_dice(auto, reference)], [], []
    for _ in range(CLICKS):
        click = largest_error_click(current, reference)
        if click is not None:
            (voxel, value), ball = click, click_balls(reference.shape, [click[0]], radius)
            marks[0, 0][ball] = value
            start = time.perf_counter()
            changed = ball
            if reach:
                previous_hints = hints
                hints = click_reach_hints(reference.shape, [(c["voxel"], c["value"]) for c in clicks] + [(voxel, value)],
                                          radius, reach, SLICE_AXIS, label=torch.from_numpy(auto))[None]
                changed = ball | (hints != previous_hints)[0, 0]
            known = KnownRegion(marks, hints if reach else None)
            # along each view of the network, the slices the ball (and hints) cross
            resampled = inferer(image, network, known=known, previous=result, region=changed)
            # the infer task's locality rule: the label changes only as the click asks and where it reaches
            outputs = {k: resampled[k] for k in output_keys(resampled)}
            resampled = keep_changes_near_marks(outputs, result, marks, ball[None, None])
            resampled = spread_along_boundary(resampled, result, marks, ball[None, None], spread, image)
            if doubt:
                resampled = doubt_like_corrected(resampled, result, marks, ball[None, None], image)
            resampled["label"] = probabilities_to_labels(resampled["probs"])
            result = resampled
            seconds.append(time.perf_counter() - start)
            current = label(result)
            clicks.append({"voxel": list(voxel), "foreground": bool(value), "value": int(value)})
        dice.append(binary_dice(current, reference))
    entropy_after = result["entropy"][0, 0].cpu().numpy()
    shown, wrong = shifted(result, marks[0, 0].numpy() != UNKNOWN), current != reference
    return {
        "dice": dice,
        "dice_auc": dice_auc(dice),
        "seconds_per_interaction": float(np.mean(seconds)) if seconds else None,
        "clicks": clicks,
        "uncertainty_auroc": {"after": auroc(entropy_after, wrong), "after_6mm": auroc(entropy_after[band], wrong[band]),
                              "after_shifted": auroc(shown, wrong), "after_6mm_shifted": auroc(shown[band], wrong[band])},
        "most_uncertain_after": _most_uncertain(entropy_after, wrong),
        "_figure": {"model": current, "entropy": shown, "clicks": clicks},
    }


def _most_uncertain(entropy: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    """The voxels at the maximum uncertainty (normalised entropy 1, where a flag puts them): how many, the share
    of them that are wrong, and the share of the wrong voxels among them."""
    top = entropy >= 1.0
    count = int(top.sum())
    return {"voxels": count, "wrong_share": float((top & wrong).sum() / count) if count else None,
            "of_wrong": float((top & wrong).sum() / wrong.sum()) if wrong.any() else None}


def _mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's runs on one head (one per seed) → their mean curves and figures, the runs under ``per_seed``."""
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    seconds = [r["seconds_per_interaction"] for r in runs if r["seconds_per_interaction"] is not None]
    return {
        "seeds": len(runs),
        "dice": np.mean([r["dice"] for r in runs], axis=0).tolist(),
        "dice_gain_sd": float(np.std([r["dice"][-1] - r["dice"][0] for r in runs], ddof=1)) if len(runs) > 1 else None,
        "dice_auc": mean([r["dice_auc"] for r in runs]),
        "seconds_per_interaction": mean(seconds),
        "uncertainty_auroc": {k: mean([r["uncertainty_auroc"][k] for r in runs])
                              for k in (f"{w}{b}{s}" for w in ("before", "after") for b in ("", "_6mm") for s in ("", "_shifted"))},
        "most_uncertain_after": {k: mean([r["most_uncertain_after"][k] for r in runs if r["most_uncertain_after"][k] is not None])
                                 for k in ("voxels", "wrong_share", "of_wrong")},
        "painted_ball": {"dice": np.mean([r["painted_ball"]["dice"] for r in runs], axis=0).tolist(),
                         "dice_auc": mean([r["painted_ball"]["dice_auc"] for r in runs]),
                         **{k: mean([r["painted_ball"][k] for r in runs])
                            for k in (f"uncertainty_auroc_after{b}{s}" for b in ("", "_6mm") for s in ("", "_shifted"))}},
        "per_seed": runs,
    }


def run(ctx: Context) -> Section:
    s = ctx.settings
    heads = s.folds[:1] if s.quick else s.folds
    per_head: dict[str, dict[str, Any]] = {}
    pictures: dict[str, dict[str, Any]] = {}
    for head in heads:
        data = fold_data(ctx, head)
        volume = data[2]
        runs: dict[str, list[dict[str, Any]]] = {}
        for seed in range(s.interactive_seeds):
            for model in INTERACTIVE_MODELS:
                pairs = variants(model)
                if not pairs:  # BENCH_INTERACTIVE_VARIANTS names none of it: its networks are not even loaded
                    continue
                network = protocol_network(ctx, head, model, seed, data)
                for how, m in refine(ctx, fit_views(volume, model), *network, seed=seed, pairs=pairs,
                                     slice_views=views(model)).items():
                    figure = m.pop("_figure")
                    if seed == 0:
                        pictures.setdefault(head, {})[method_name(model, *how)] = figure
                    runs.setdefault(method_name(model, *how), []).append(m)
        per_head[head] = {"slices": int(volume.label.shape[2]),
                          "methods": {method: _mean_over_seeds(r) for method, r in runs.items()}}
    first = next(iter(pictures))
    shown = method_name(FIGURE_MODEL, FIGURE_RADIUS, FIGURE_REACH, FIGURE_SPREAD, FIGURE_DOUBT)
    shown = shown if shown in pictures[first] else next(iter(pictures[first]))  # BENCH_INTERACTIVE_VARIANTS
    figure = plot_interaction(pictures[first][shown], ctx.out_dir / "interactive.png", f"{first}, held out, {shown}, seed 0")
    rows = []
    for head, r in per_head.items():
        for method, m in r["methods"].items():
            rows.append([head, method, *m["dice"], m["dice_auc"], m["seconds_per_interaction"]])
            painted = m["painted_ball"]
            rows.append([head, f"painted ball (into {method}'s label)", *painted["dice"], painted["dice_auc"], None])
    table = md_table(["head", "method", *[f"Dice {c}" for c in range(CLICKS + 1)], "AUC", "s / interaction"], rows)
    summary = {}
    for method in next(iter(per_head.values()))["methods"]:
        seeds = [run for r in per_head.values() for run in r["methods"][method]["per_seed"]]
        gain = [r["methods"][method]["dice"][-1] - r["methods"][method]["dice"][0] for r in per_head.values()]
        over_ball = [min(np.subtract(m["dice"], m["painted_ball"]["dice"])) for m in seeds]
        summary[method] = {"dice_gain_after_clicks": float(np.mean(gain)), "worst_click_vs_painted_ball": float(min(over_ball))}
    results = {
        "interactive": summary,
        "clicks": CLICKS, "radii_voxels": list(RADII), "radii_mm": [r * SPACING_MM for r in RADII], "seeds": s.interactive_seeds,
        "sampler": f"DDIM {s.eval_steps} steps x {s.eval_members} members (axial network; {MEMBERS_PER_VIEW} per view "
                   "for the three-view one), the slices the click's ball (and hints) cross re-sampled",
        "reach_slices": REACH,
        "methods": {"medsegdiff": "RePaint-style conditioning only (any trained network), axial",
                    SERVED_RECIPE: "the committed model's recipe: three views, MSE + soft Dice; each click re-samples, "
                                   "along each view, the slices its ball crosses (the rest of each view's result kept, "
                                   "then pooled), with RePaint-style conditioning + the marks as guidance channels "
                                   "(trained with simulated clicks, half of them on the network's own errors); with "
                                   "'hints': each click's disc also on the next slices as guidance only; with 'boundary "
                                   "moved': click_spread; with 'flagged': click_doubt"},
        "per_head": per_head,
        "quick_note": "QUICK MODE: one head, a central slab, a barely trained network; numbers mean nothing" if s.quick else None,
    }
    return Section("interactive", finite(results), table, [figure])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["interactive"]))
