"""4. Uncertainty quality on a held-out head, and the head overlay picture.

The sample model segments the whole Colin27 head (never seen in training) with the default ensemble; the fused
probability, the label and the predictive entropy are resampled onto the native 1 mm grid. Reported:

* AUROC of the entropy for finding the voxels the fused label gets wrong, over the whole volume (most of it easy
  background) and within 6 mm of the reference brain surface (where the errors are);
* a reliability diagram of the fused probability with its expected calibration error (ECE, 10 bins);
* ``head_overlay.png``: axial and coronal slices with the label contour and the entropy overlay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medsegdiff.metrics import dice_per_class, hd95_per_class

from .context import Context
from .report import Section, auroc, finite, md_table, save_figure
from .settings import CAVEAT

__all__ = ["run", "reliability"]

BAND_MM = 6.0


def reliability(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability table of probabilities ``prob`` for binary ``truth``: per bin mean p, observed rate, count; ECE."""
    prob = np.asarray(prob, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    index = np.clip((prob * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=prob, minlength=bins)
    sum_t = np.bincount(index, weights=truth.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, rate = sum_p / count, sum_t / count
    filled = count > 0
    ece = float(np.sum(count[filled] / count.sum() * np.abs(rate[filled] - mean_p[filled])))
    return {
        "bin_edges": np.linspace(0, 1, bins + 1).tolist(),
        "mean_probability": [float(v) if c else None for v, c in zip(mean_p, count)],
        "observed_rate": [float(v) if c else None for v, c in zip(rate, count)],
        "count": count.tolist(),
        "ece": ece,
    }


def run(ctx: Context) -> Section:
    volume = ctx.grid("colin27")
    scan = ctx.scan("colin27")
    out = ctx.sample_model_on("colin27")
    reference = volume.native_label > 0
    label = out["label_native"] > 0
    entropy = volume.to_native(out["entropy"])[0]
    prob = volume.to_native(out["distribution"][1:2], fill=0.0)[0]
    errors = label != reference
    spacing = volume.native_spacing
    distance = np.where(
        reference, ndi.distance_transform_edt(reference, sampling=spacing), ndi.distance_transform_edt(~reference, sampling=spacing)
    )
    band = distance <= BAND_MM
    components, count = ndi.label(label)
    largest = components == (np.bincount(components.ravel())[1:].argmax() + 1) if count else label
    results = {
        "held_out": "Colin27 whole head, 1 mm native grid (never seen by the sample model)",
        "model": ctx.model_source,
        "sampler": f"DDIM {out['steps']} steps x {out['members']} members, mean fusion",
        "uncertainty": "predictive entropy of the members' mean, normalised to [0, 1]",
        "uncertainty_auroc": auroc(entropy, errors),
        "uncertainty_auroc_boundary_band": auroc(entropy[band], errors[band]),
        "band_mm": BAND_MM,
        "error_fraction": float(errors.mean()),
        "errors_inside_band": float(errors[band].sum() / max(errors.sum(), 1)),
        "dice": dice_per_class(label.astype(np.uint8), reference.astype(np.uint8))[0],
        "hd95_mm": hd95_per_class(label.astype(np.uint8), reference.astype(np.uint8), 1, spacing)[0],
        # not what the app does: shows how much of the error is detached false positives (neck, skull)
        "dice_largest_component": dice_per_class(largest.astype(np.uint8), reference.astype(np.uint8))[0],
        "hd95_mm_largest_component": hd95_per_class(largest.astype(np.uint8), reference.astype(np.uint8), 1, spacing)[0],
        "reliability": reliability(prob, reference),
        "reliability_boundary_band": reliability(prob[band], reference[band]),
        "seconds_whole_head": out["seconds"],
    }
    table = md_table(
        ["held-out head", "AUROC (whole volume)", f"AUROC (≤{BAND_MM:g} mm of surface)", "ECE", f"ECE (≤{BAND_MM:g} mm)",
         "Dice", "HD95 mm", "Dice / HD95 largest component"],
        [["Colin27", results["uncertainty_auroc"], results["uncertainty_auroc_boundary_band"],
          results["reliability"]["ece"], results["reliability_boundary_band"]["ece"], results["dice"], results["hd95_mm"],
          f"{results['dice_largest_component']:.3f} / {results['hd95_mm_largest_component']:.1f}"]],
    )
    figures = [_plot_reliability(ctx, results), _plot_overlay(ctx, scan.image, reference, label, entropy, spacing)]
    return Section("uncertainty_quality", finite(results), table, figures)


def _plot_reliability(ctx: Context, results: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 6.4), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="perfect calibration")
    for key, name in (("reliability", "whole volume"), ("reliability_boundary_band", f"≤ {BAND_MM:g} mm of the brain surface")):
        r = results[key]
        points = [(p, o) for p, o in zip(r["mean_probability"], r["observed_rate"]) if p is not None]
        ax.plot(*zip(*points), "o-", label=f"{name} (ECE {r['ece']:.3f})")
        centres = (np.asarray(r["bin_edges"][:-1]) + 0.05).tolist()
        hist.bar(centres, r["count"], width=0.09, alpha=0.5, label=name)
    ax.set_ylabel("observed brain fraction")
    ax.set_title("Reliability of the fused probability, held-out Colin27")
    ax.legend(fontsize=7)
    hist.set_yscale("log")
    hist.set_xlabel("fused probability (bin)")
    hist.set_ylabel("voxels")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, ctx.out_dir / "reliability.png", CAVEAT)


def _plot_overlay(ctx: Context, image, reference, label, entropy, spacing) -> str:
    import matplotlib.pyplot as plt

    from medsegdiff.sample_data import normalize_intensity

    image = normalize_intensity(image)
    centre = [int(round(c)) for c in ndi.center_of_mass(reference)]
    views = [
        ("axial", lambda a: a[:, :, centre[2]].T, spacing[0] / spacing[1]),
        ("coronal", lambda a: a[:, centre[1], :].T, spacing[0] / spacing[2]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6))
    for ax, (name, cut, aspect) in zip(axes, views):
        ax.imshow(cut(image), cmap="gray", origin="lower", aspect=1 / aspect)
        shown = np.ma.masked_less(cut(entropy), 0.3)  # H(0.95) = 0.29: confident voxels stay clear
        overlay = ax.imshow(shown, cmap="inferno", origin="lower", alpha=0.65, vmin=0, vmax=1, aspect=1 / aspect)
        ax.contour(cut(reference.astype(float)), levels=[0.5], colors="cyan", linewidths=0.8, linestyles="dashed")
        ax.contour(cut(label.astype(float)), levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(f"Colin27 {name} (held out), neurological view")
        ax.set_axis_off()
    cbar = fig.colorbar(overlay, ax=axes, fraction=0.025, pad=0.02)
    cbar.set_label("predictive entropy (0-1), shown above 0.3")
    fig.suptitle("MedSegDiff brain label (green), reference (cyan dashed), ensemble uncertainty (colour)")
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.1, top=0.9, wspace=0.03)
    return save_figure(fig, ctx.out_dir / "head_overlay.png", CAVEAT)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["uncertainty_quality"]))
