"""Where the automatic label is wrong, and how much of it clicks can reach (issue 13's +3 Dice points).

On each held-out head, with the committed model's recipe (:data:`~bench.models.SERVED_RECIPE`) of the
fold that holds it out, seeds ``0..interactive_seeds - 1`` (the run folder's protocol cells; ``BENCH_OUT`` picks
the run, e.g. ``bench/results/iter2400`` for the committed model's budget), the automatic label is sampled as the
infer task samples it and its wrong voxels are split into 3D connected components (the components the simulated
clicks aim at, :func:`medsegdiff.guidance.largest_error_click`). Reported per head and seed: the wrong voxels as a
share of the reference, the largest component (its voxels, the share of them that are misses rather than false
positives: a component can hold both where they touch, as the click rule sees it; its share of the wrong voxels,
its thickness: mean and largest distance of its voxels to its border), the Dice if the largest 1 / 5 components
were fixed entirely (what five perfect whole-component corrections could give) and after 5 painted balls of the
interactive bench's radius (what five local corrections give), and the image intensity, relative to deep
brain, of the reference's boundary and of the wrong voxels (:func:`boundary_intensity`: where each head's mask
was drawn, and which of those voxels the model gets wrong).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medsegdiff.evaluation import binary_dice, surface_band
from medsegdiff.guidance import depth_inside

from .context import Context
from .interactive import CLICKS, FIGURE_RADIUS, automatic_label, fit_views, painted_ball, protocol_network
from .judge import BAND_MM
from .models import SERVED_RECIPE, views
from .protocol import fold_data
from .report import Section, finite, md_table
from .settings import SPACING_MM

__all__ = ["FIXED", "DEEP_VOXELS", "boundary_intensity", "error_structure", "run"]

FIXED = (1, 5)
"""Counts of largest error components fixed entirely that the ceiling is reported for."""


DEEP_VOXELS = 3
"""The reference eroded this many voxels is "deep brain", the intensity the others are relative to."""
INTENSITY_SETS = ("inner_shell", "outer_shell", "missed", "false_positive")


def boundary_intensity(image: np.ndarray, label: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """Median image intensity, relative to the median of deep brain (``reference`` eroded :data:`DEEP_VOXELS`
    times), of: the reference's inner shell (its voxels with a neighbour outside it: where its boundary was
    drawn), its outer shell (the voxels just outside), and the missed and false-positive voxels of ``label``.

    The heads' references come from different tools (ROBEX, BET, ITK's skull strip); an inner shell at 0.5 of deep
    brain is a mask drawn out into the dark CSF, at 0.8 one drawn on the brighter tissue. None where a set is empty.

    Raises:
        ValueError: the arrays differ in shape, or the reference has no deep voxels.
    """
    image = np.asarray(image, dtype=np.float64)
    label, reference = np.asarray(label).astype(bool), np.asarray(reference).astype(bool)
    if not image.shape == label.shape == reference.shape:
        raise ValueError(f"image {image.shape}, label {label.shape} and reference {reference.shape} must match")
    deep = ndimage.binary_erosion(reference, iterations=DEEP_VOXELS)
    if not deep.any():
        raise ValueError(f"the reference has no voxels {DEEP_VOXELS} voxels inside its border")
    scale = float(np.median(image[deep]))
    sets = {"inner_shell": reference & ~ndimage.binary_erosion(reference),
            "outer_shell": ndimage.binary_dilation(reference) & ~reference,
            "missed": reference & ~label, "false_positive": label & ~reference}
    return {name: float(np.median(image[sets[name]]) / scale) if sets[name].any() else None for name in INTENSITY_SETS}


def error_structure(label: np.ndarray, reference: np.ndarray, fixed: tuple[int, ...] = FIXED) -> dict[str, Any]:
    """The wrong voxels of binary ``label`` against ``reference``, split into 3D connected components.

    Returns:
        ``error_share`` (wrong voxels / reference voxels), ``components``, ``largest`` (``voxels``; ``missed``: the
        share of them inside the reference, the rest false positives; ``share`` of the wrong voxels;
        ``mean_depth`` / ``max_depth``: distance of its voxels to its border in voxels, 1 for a one-voxel-thick
        rim) and ``dice_fixed`` (Dice with the ``k`` largest components set to the reference, for each ``k`` of
        ``fixed``).

    Raises:
        ValueError: ``label`` and ``reference`` differ in shape.
    """
    label, reference = np.asarray(label).astype(bool), np.asarray(reference).astype(bool)
    if label.shape != reference.shape:
        raise ValueError(f"label of shape {label.shape} and reference of shape {reference.shape} must match")
    wrong = label != reference
    components, count = ndimage.label(wrong)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    order = np.argsort(sizes, kind="stable")[::-1] + 1  # component ids, largest first
    out: dict[str, Any] = {"error_share": float(wrong.sum() / max(reference.sum(), 1)), "components": int(count),
                           "largest": None, "dice_fixed": {}}
    if count == 0:
        out["dice_fixed"] = {k: binary_dice(label.astype(np.uint8), reference.astype(np.uint8)) for k in fixed}
        return out
    largest = components == order[0]
    depth = depth_inside(largest)[largest]
    out["largest"] = {"voxels": int(largest.sum()), "missed": float(reference[largest].mean()),
                      "share": float(largest.sum() / wrong.sum()), "mean_depth": float(depth.mean()),
                      "max_depth": float(depth.max())}
    for k in fixed:
        repaired = label.copy()
        chosen = np.isin(components, order[:k])
        repaired[chosen] = reference[chosen]
        out["dice_fixed"][k] = binary_dice(repaired.astype(np.uint8), reference.astype(np.uint8))
    return out


def run(ctx: Context) -> Section:
    s = ctx.settings
    heads = s.folds[:1] if s.quick else s.folds
    cases: list[dict[str, Any]] = []
    for head in heads:
        data = fold_data(ctx, head)
        volume = fit_views(data[2], SERVED_RECIPE)
        reference = (volume.label > 0).astype(np.uint8)
        band = surface_band(reference, (SPACING_MM,) * 3, BAND_MM)
        for seed in range(s.interactive_seeds):
            network, source = protocol_network(ctx, head, SERVED_RECIPE, seed, data)
            _, _, result, _ = automatic_label(ctx, volume, network, seed, views(SERVED_RECIPE))
            auto = result["label"][0, 0].cpu().numpy().astype(np.uint8)
            ball = painted_ball(auto, reference, FIGURE_RADIUS, result["entropy"][0, 0].cpu().numpy(), band)["dice"][-1]
            try:
                intensity = boundary_intensity(volume.image, auto, reference)
            except ValueError:  # quick mode's thin slab has no deep brain
                intensity = dict.fromkeys(INTENSITY_SETS)
            cases.append({"head": head, "seed": seed, "network": source, "dice": binary_dice(auto, reference),
                          "dice_painted_balls": ball, **error_structure(auto, reference), "intensity": intensity})
    rows = []
    for c in cases:
        big = c["largest"] or {"voxels": 0, "missed": None, "share": 0.0, "mean_depth": None, "max_depth": None}
        rows.append([c["head"], c["seed"], c["dice"], 100 * c["error_share"], big["voxels"],
                     None if big["missed"] is None else 100 * big["missed"], 100 * big["share"], big["mean_depth"],
                     big["max_depth"], *(c["dice_fixed"][k] for k in FIXED), c["dice_painted_balls"],
                     *(c["intensity"][k] for k in INTENSITY_SETS)])
    table = md_table(["head", "seed", "Dice", "wrong % of reference", "largest error: voxels", "% of it missed", "% of wrong",
                      "mean depth vox", "max depth vox", *(f"Dice, {k} largest fixed" for k in FIXED),
                      f"Dice, {CLICKS} painted {FIGURE_RADIUS * SPACING_MM:g} mm balls", "reference inner shell",
                      "reference outer shell", "missed voxels", "false-positive voxels"], rows)
    results = {
        "model": SERVED_RECIPE,
        "run_folder": str(ctx.out_dir),
        "sampler": f"DDIM {s.eval_steps} steps, members as the interactive bench (per view), largest component not applied",
        "cases": cases,
        "quick_note": "QUICK MODE: one head, a barely trained network; numbers mean nothing" if s.quick else None,
    }
    return Section("error_structure", finite(results), table)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["error_structure"]))
