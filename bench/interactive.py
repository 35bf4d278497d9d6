"""Interactive correction with simulated clicks (CVPR 2025 interactive 3D segmentation challenge style).

On each held-out head, with the leave-one-head-out protocol's seed-0 networks trained without it (saved by the
protocol as ``cells/<head>__<model>__s0.pt``, computed here when missing) of :data:`~bench.models.INTERACTIVE_MODELS`
(``medsegdiff``: RePaint-style conditioning only; ``medsegdiff_guided``: the same plus the marks as guidance
channels, trained with simulated clicks), start from the automatic label, then up to :data:`CLICKS` simulated
clicks, each at the centre (maximum of the distance transform) of the largest 3D error component of the current
label (:func:`medsegdiff.guidance.largest_error_click`): a foreground click on a miss, a background click on a
false positive. The model takes each click as a ball of :data:`RADIUS` model voxels, as the infer task does
(:mod:`medsegdiff.interaction`), and re-samples the slices the ball crosses; the baseline "painted ball" paints
the same ball into the method's own automatic label without a model. Reported: Dice after every click, the area
under the Dice curve (trapezoid, normalised to [0, 1]), seconds per interaction, and the AUROC of the entropy for
the wrong voxels before / after.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from medsegdiff.evaluation import auroc, binary_dice
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.guidance import largest_error_click
from medsegdiff.interaction import UNKNOWN, KnownRegion, click_balls, slices_holding
from medsegdiff.sample_model import sample_diffusion_config
from medsegdiff.sampling import EnsembleSampler

from .context import Context
from .interactive_figure import plot_interaction
from .models import INTERACTIVE_MODELS, build, train
from .protocol import Cells, cell_key, fold_data, run_cell
from .report import Section, finite, md_table
from .settings import SPACING_MM

__all__ = ["CLICKS", "RADIUS", "FIGURE_MODEL", "dice_auc", "painted_ball", "refine", "run"]

CLICKS = 5
RADIUS = 2
"""Click ball radius in model voxels (3 mm each), for the model and the painted-ball baseline."""
FIGURE_MODEL = "medsegdiff_guided"
"""The method the figure shows (the committed sample model's kind: guidance channels + RePaint)."""


def _network(ctx: Context, head: str, model: str, data) -> tuple[torch.nn.Module, str]:
    """The protocol's seed-0 ``model`` of the fold that holds ``head`` out (computed here, as the protocol
    computes it, when the run folder lacks it; quick mode trains a throw-away network instead)."""
    cells = Cells(ctx)
    path = cells.network_path(cell_key(head, model, 0))
    if not path.is_file() and not ctx.settings.quick:
        run_cell(ctx, cells, head, model, 0, data)
    network = build(model, 0)
    why = "no protocol cell"
    if path.is_file():
        try:
            network.load_state_dict(torch.load(path, map_location="cpu"))
            return network.to(ctx.device).eval(), f"protocol cell {path.name}"
        except RuntimeError:  # saved by a run with another architecture
            why = f"{path.name} holds another architecture"
    images, labels, _, _ = data
    iterations = max(ctx.settings.fallback_model_iterations, 40)  # the OneCycle warm-up needs >= 2 steps
    network = train(model, build(model, 0).to(ctx.device), images, labels, iterations, 0, ctx.device).network
    return network.eval(), f"trained here for {iterations} iterations ({why}): numbers mean nothing"


def dice_auc(dice: list[float]) -> float:
    """Area under the Dice-per-click curve (trapezoid), normalised to [0, 1]."""
    return float(np.trapz(dice) / (len(dice) - 1))


def painted_ball(auto: np.ndarray, reference: np.ndarray) -> list[float]:
    """The no-model baseline: each click paints a ball of :data:`RADIUS` into the label (Dice after each)."""
    painted, dice = auto.copy(), [binary_dice(auto, reference)]
    for _ in range(CLICKS):
        click = largest_error_click(painted, reference)
        if click is not None:
            painted[click_balls(reference.shape, [click[0]], RADIUS).numpy()] = click[1]
        dice.append(binary_dice(painted, reference))
    return dice


def refine(ctx: Context, volume, network: torch.nn.Module, source: str) -> dict[str, Any]:
    """Automatic label, then :data:`CLICKS` simulated clicks, each re-sampling the slices its ball crosses."""
    s = ctx.settings
    reference = (volume.label > 0).astype(np.uint8)
    sampler = EnsembleSampler(sample_diffusion_config(), "ddim", s.eval_steps, s.eval_members)
    inferer = MedSegDiffInferer(sampler, seed=0, slice_axis=2, slice_batch_size=1)
    image = torch.from_numpy(np.ascontiguousarray(volume.image))[None, None].float().to(ctx.device)
    start = time.perf_counter()
    result = inferer(image, network)
    auto_seconds = time.perf_counter() - start
    label = lambda out: out["label"][0, 0].cpu().numpy().astype(np.uint8)  # noqa: E731
    auto = label(result)
    entropy_before = result["entropy"][0, 0].cpu().numpy()
    marks = torch.full((1, 1, *reference.shape), UNKNOWN, dtype=torch.long)
    current, dice, seconds, clicks = auto.copy(), [binary_dice(auto, reference)], [], []
    for _ in range(CLICKS):
        click = largest_error_click(current, reference)
        if click is not None:
            (voxel, value), ball = click, click_balls(reference.shape, [click[0]], RADIUS)
            marks[0, 0][ball] = value
            start = time.perf_counter()
            result = inferer(image, network, known=KnownRegion(marks), previous=result, slices=slices_holding(ball, 2))
            seconds.append(time.perf_counter() - start)
            current = label(result)
            clicks.append({"voxel": list(voxel), "foreground": bool(value)})
        dice.append(binary_dice(current, reference))
    entropy_after = result["entropy"][0, 0].cpu().numpy()
    return {
        "network": source,
        "automatic_seconds": auto_seconds,
        "dice": dice,
        "dice_auc": dice_auc(dice),
        "seconds_per_interaction": float(np.mean(seconds)) if seconds else None,
        "clicks": clicks,
        "uncertainty_auroc": {"before": auroc(entropy_before, auto != reference),
                              "after": auroc(entropy_after, current != reference)},
        "_figure": {"image": volume.image, "reference": reference, "auto": auto, "model": current,
                    "entropy": entropy_after, "clicks": clicks},
    }


def run(ctx: Context) -> Section:
    s = ctx.settings
    heads = s.folds[:1] if s.quick else s.folds
    per_head: dict[str, dict[str, Any]] = {}
    for head in heads:
        data = fold_data(ctx, head)
        volume = data[2]
        methods = {model: refine(ctx, volume, *_network(ctx, head, model, data)) for model in INTERACTIVE_MODELS}
        for m in methods.values():
            painted = painted_ball(m["_figure"]["auto"], (volume.label > 0).astype(np.uint8))
            m["painted_ball"] = {"dice": painted, "dice_auc": dice_auc(painted)}
        per_head[head] = {"slices": int(volume.label.shape[2]), "methods": methods}
    pictures = {h: {m: r["methods"][m].pop("_figure") for m in INTERACTIVE_MODELS} for h, r in per_head.items()}
    first = next(iter(pictures))
    figure = plot_interaction(pictures[first][FIGURE_MODEL], ctx.out_dir / "interactive.png",
                              f"{first}, held out, {FIGURE_MODEL}")
    rows = []
    for head, r in per_head.items():
        for method, m in r["methods"].items():
            rows.append([head, method, *m["dice"], m["dice_auc"], m["seconds_per_interaction"]])
            painted = m["painted_ball"]
            rows.append([head, f"painted ball (into {method}'s label)", *painted["dice"], painted["dice_auc"], None])
    table = md_table(["head", "method", *[f"Dice {c}" for c in range(CLICKS + 1)], "AUC", "s / interaction"], rows)
    summary = {}
    for model in INTERACTIVE_MODELS:
        gain = [r["methods"][model]["dice"][-1] - r["methods"][model]["dice"][0] for r in per_head.values()]
        methods = [r["methods"][model] for r in per_head.values()]
        over_ball = [min(np.subtract(m["dice"], m["painted_ball"]["dice"])) for m in methods]
        summary[model] = {"dice_gain_after_clicks": float(np.mean(gain)), "worst_click_vs_painted_ball": float(min(over_ball))}
    results = {
        "interactive": summary,
        "clicks": CLICKS, "radius_voxels": RADIUS, "radius_mm": RADIUS * SPACING_MM,
        "sampler": f"DDIM {s.eval_steps} steps x {s.eval_members} members, the slices the click's ball crosses re-sampled",
        "methods": {"medsegdiff": "RePaint-style conditioning only (any trained network)",
                    "medsegdiff_guided": "RePaint-style conditioning + the marks as guidance channels (trained with "
                                         "simulated clicks, half of them on the network's own errors)"},
        "per_head": per_head,
        "quick_note": "QUICK MODE: one head, a central slab, a barely trained network; numbers mean nothing" if s.quick else None,
    }
    return Section("interactive", finite(results), table, [figure])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["interactive"]))
