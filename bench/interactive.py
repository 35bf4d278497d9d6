"""Interactive correction with simulated clicks (CVPR 2025 interactive 3D segmentation challenge style).

On each held-out head (the leave-one-head-out protocol's seed-0 MedSegDiff trained without it, saved by the
protocol section as ``cells/<head>__medsegdiff__s0.pt``), start from the automatic label, then up to
:data:`CLICKS` simulated clicks, each at the centre (maximum of the distance transform) of the largest 3D error
component of the current label: a foreground click on a miss, a background click on a false positive. The model
takes each click as a disc of :data:`RADIUS` model voxels on the click's axial slice (RePaint-style conditioning,
:mod:`medsegdiff.interaction`) and re-samples that slice only; the baseline "painted disc" paints the same disc
into its own label without a model. Reported: Dice after every click, the area under the Dice curve (trapezoid,
normalised to [0, 1]), seconds per interaction, and the AUROC of the entropy for the wrong voxels before / after.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medsegdiff.evaluation import auroc, binary_dice
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.interaction import UNKNOWN, KnownRegion, click_discs
from medsegdiff.sample_model import sample_diffusion_config
from medsegdiff.sampling import EnsembleSampler

from .context import Context
from .interactive_figure import plot_interaction
from .models import build, train
from .protocol import Cells, cell_key, fold_data, run_cell
from .report import Section, finite, md_table
from .settings import SPACING_MM

__all__ = ["CLICKS", "RADIUS", "next_click", "run"]

CLICKS = 5
RADIUS = 2
"""Click disc radius in model voxels (3 mm each), for the model and the painted-disc baseline."""


def next_click(prediction: np.ndarray, reference: np.ndarray) -> tuple[tuple[int, ...], int] | None:
    """(voxel, class) of the next simulated click: the centre of the largest error component; None if no error."""
    errors = prediction != reference
    components, count = ndimage.label(errors)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(errors, components, range(1, count + 1))))
    region = components == largest
    distance = ndimage.distance_transform_edt(region)  # the volume's border is no boundary of the error region
    deepest = np.argwhere(distance == distance.max())
    centroid = np.argwhere(region).mean(axis=0)  # ties (thin regions): the deepest voxel nearest the centroid
    voxel = tuple(int(v) for v in deepest[np.argmin(((deepest - centroid) ** 2).sum(axis=1))])
    return voxel, int(reference[voxel] > 0)


def _network(ctx: Context, head: str, data) -> tuple[torch.nn.Module, str]:
    """The protocol's seed-0 MedSegDiff of the fold that holds ``head`` out (computed here, as the protocol
    computes it, when the run folder lacks it; quick mode trains a throw-away network instead)."""
    cells = Cells(ctx)
    path = cells.network_path(cell_key(head, "medsegdiff", 0))
    if not path.is_file() and not ctx.settings.quick:
        run_cell(ctx, cells, head, "medsegdiff", 0, data)
    network = build("medsegdiff", 0)
    why = "no protocol cell"
    if path.is_file():
        try:
            network.load_state_dict(torch.load(path, map_location="cpu"))
            return network.to(ctx.device).eval(), f"protocol cell {path.name}"
        except RuntimeError:  # saved by a run with another architecture
            why = f"{path.name} holds another architecture"
    images, labels, _, _ = data
    iterations = max(ctx.settings.fallback_model_iterations, 40)  # the OneCycle warm-up needs >= 2 steps
    network = train("medsegdiff", build("medsegdiff", 0).to(ctx.device), images, labels, iterations, 0, ctx.device).network
    return network.eval(), f"trained here for {iterations} iterations ({why}): numbers mean nothing"


def _head(ctx: Context, head: str) -> dict[str, Any]:
    s = ctx.settings
    data = fold_data(ctx, head)
    volume = data[2]
    network, source = _network(ctx, head, data)
    reference = (volume.label > 0).astype(np.uint8)
    sampler = EnsembleSampler(sample_diffusion_config(), "ddim", s.eval_steps, s.eval_members)
    inferer = MedSegDiffInferer(sampler, seed=0, slice_axis=2, slice_batch_size=1)
    image = torch.from_numpy(np.ascontiguousarray(volume.image))[None, None].float().to(ctx.device)
    start = time.perf_counter()
    result = inferer(image, network)
    auto_seconds = time.perf_counter() - start
    label = lambda out: out["label"][0, 0].cpu().numpy().astype(np.uint8)  # noqa: E731
    auto = label(result)
    marks = torch.full((1, 1, *reference.shape), UNKNOWN, dtype=torch.long)
    model, painted = auto.copy(), auto.copy()
    dice = {"model": [binary_dice(auto, reference)], "painted_disc": [binary_dice(auto, reference)]}
    seconds, clicks = [], []
    for _ in range(CLICKS):
        click = next_click(model, reference)
        if click is not None:
            (voxel, value), disc = click, click_discs(reference.shape, [click[0]], RADIUS, slice_axis=2)
            marks[0, 0][disc] = value
            start = time.perf_counter()
            result = inferer(image, network, known=KnownRegion(marks), previous=result, slices=[voxel[2]])
            seconds.append(time.perf_counter() - start)
            model = label(result)
            clicks.append({"voxel": list(voxel), "foreground": bool(value)})
        painted_click = next_click(painted, reference)
        if painted_click is not None:
            painted[click_discs(reference.shape, [painted_click[0]], RADIUS, slice_axis=2).numpy()] = painted_click[1]
        dice["model"].append(binary_dice(model, reference))
        dice["painted_disc"].append(binary_dice(painted, reference))
    entropy_before = inferer(image, network)["entropy"][0, 0].cpu().numpy()
    return {
        "network": source,
        "slices": int(reference.shape[2]),
        "automatic_seconds": auto_seconds,
        "dice": dice,
        "dice_auc": {k: float(np.trapz(v) / (len(v) - 1)) for k, v in dice.items()},
        "seconds_per_interaction": float(np.mean(seconds)) if seconds else None,
        "clicks": clicks,
        "uncertainty_auroc": {
            "before": auroc(entropy_before, auto != reference),
            "after": auroc(result["entropy"][0, 0].cpu().numpy(), model != reference),
        },
        "_figure": {"image": volume.image, "reference": reference, "auto": auto, "model": model,
                    "entropy": result["entropy"][0, 0].cpu().numpy(), "clicks": clicks},
    }


def run(ctx: Context) -> Section:
    s = ctx.settings
    heads = s.folds[:1] if s.quick else s.folds
    per_head = {head: _head(ctx, head) for head in heads}
    pictures = {h: r.pop("_figure") for h, r in per_head.items()}
    first = next(iter(pictures))
    figure = plot_interaction(pictures[first], ctx.out_dir / "interactive.png", f"{first}, held out")
    rows = []
    for head, r in per_head.items():
        for method in ("model", "painted_disc"):
            rows.append([head, method, *r["dice"][method], r["dice_auc"][method],
                         r["seconds_per_interaction"] if method == "model" else None])
    table = md_table(["head", "method", *[f"Dice {c}" for c in range(CLICKS + 1)], "AUC", "s / interaction"], rows)
    gain = [r["dice"]["model"][-1] - r["dice"]["model"][0] for r in per_head.values()]
    over_disc = [min(np.subtract(r["dice"]["model"], r["dice"]["painted_disc"])) for r in per_head.values()]
    results = {
        "interactive": {"dice_gain_after_clicks": float(np.mean(gain)), "worst_click_vs_painted_disc": float(min(over_disc))},
        "clicks": CLICKS, "radius_voxels": RADIUS, "radius_mm": RADIUS * SPACING_MM,
        "sampler": f"DDIM {s.eval_steps} steps x {s.eval_members} members, the click's slice re-sampled",
        "per_head": per_head,
        "quick_note": "QUICK MODE: one head, a central slab, a barely trained network; numbers mean nothing" if s.quick else None,
    }
    return Section("interactive", finite(results), table, [figure])


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["interactive"]))
