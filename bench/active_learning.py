"""5. Active learning, simulated: pick the next volume to label by uncertainty (as the app does) vs at random.

Pool: the sample datastore's volumes (``robex_head`` labelled; ``robex_head_flipped``, ``robex_head_lowres`` and
``mni152_head`` unlabelled) plus ``mni152_head_lowres`` made here with the datastore's low-res recipe;
``colin27_head`` is taken out of the pool to be the held-out test head. "Labelling" a volume = taking its
reference mask from the datastore's ``sample_reference`` folder.

Round 0 is the sample model (trained on ``robex_head``, the one labelled volume). Each round a strategy adds one
volume and fine-tunes its own copy of the model on all its labelled volumes for a small, fixed number of
iterations (``train_on_arrays``, batch 8, lr 2e-4 as the app's trainer). ``uncertainty`` scores every unlabelled volume like the app's
scoring method: mean predictive entropy inside the bounding box of the predicted brain (3 voxel margin, here on
the 3 mm model grid, every n-th axial slice) from a 2-step DDIM x 3-member ensemble. The Dice on the held-out head
is computed like the app's validation: 2-step DDIM x 2 members, all axial slices, native grid.
Budgets are small: a trend, not a converged result.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.processing
import numpy as np
from scipy import ndimage as ndi

from medsegdiff.metrics import dice_per_class
from medsegdiff.sample_data import Scan, read_manifest

from medsegdiff.training import train_on_arrays

from .context import Context
from .grid import GridVolume, to_model_grid
from .report import Section, finite, md_table, save_figure
from .segment import segment_diffusion
from .settings import CAVEAT

__all__ = ["run", "region_score"]

HELD_OUT = "colin27_head"
STRATEGIES = ("uncertainty", "random")


def region_score(entropy: np.ndarray, label: np.ndarray, margin: int = 3) -> float:
    """Mean entropy in the bounding box of ``label > 0`` grown by ``margin`` (the app's ``lib.uncertainty`` rule)."""
    coords = np.nonzero(label > 0)
    if coords[0].size == 0:
        return float(entropy.mean())
    box = tuple(slice(max(int(c.min()) - margin, 0), int(c.max()) + margin + 1) for c in coords)
    return float(entropy[box].mean())


def _lowres(image: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The datastore's ``robex_head_lowres`` recipe: blur to a 3 mm FWHM point spread, resample to 3 mm."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma_mm = np.sqrt(np.maximum(3.0**2 - spacing**2, 0.0)) / 2.3548
    blurred = ndi.gaussian_filter(image, sigma=sigma_mm / spacing)
    low = nibabel.processing.resample_to_output(nib.Nifti1Image(blurred, affine), voxel_sizes=(3.0, 3.0, 3.0), order=1)
    low_mask = nibabel.processing.resample_from_to(nib.Nifti1Image(mask.astype(np.float32), affine), low, order=1)
    return np.asarray(low.dataobj, np.float32), low.affine, (np.asarray(low_mask.dataobj) >= 0.5).astype(np.uint8)


def _pool(ctx: Context) -> dict[str, GridVolume]:
    root = ctx.sample_datastore()
    manifest = read_manifest(root)
    volumes: dict[str, GridVolume] = {}
    for item_id in manifest["ids"]:
        if item_id == HELD_OUT:
            continue
        entry = manifest["items"][item_id]
        image = nib.as_closest_canonical(nib.load(str(root / entry["image"])))
        mask = nib.as_closest_canonical(nib.load(str((root / entry["reference_mask"]).resolve())))
        data = np.asarray(image.dataobj, np.float32)
        label = (np.asarray(mask.dataobj) > 0).astype(np.uint8)
        volumes[item_id] = to_model_grid(Scan(item_id, data, label, image.affine, {"brain": 1}))
        if item_id == "mni152_head":
            low_image, low_affine, low_label = _lowres(data, image.affine, label)
            volumes["mni152_head_lowres"] = to_model_grid(Scan("mni152_head_lowres", low_image, low_label, low_affine, {"brain": 1}))
    return volumes


def run(ctx: Context) -> Section:
    s = ctx.settings
    network, diffusion, _ = ctx.model
    pool = _pool(ctx)
    held = ctx.grid("colin27")
    start_id = "robex_head"

    def evaluate(net) -> float:
        out = segment_diffusion(net, diffusion, held, steps=2, members=2)
        return dice_per_class(held.labels_to_native(out["distribution"]), held.native_label)[0]

    def score(net, volume: GridVolume) -> float:
        z = list(range(0, volume.image.shape[2], s.al_score_stride))
        out = segment_diffusion(net, diffusion, volume, steps=2, members=3, z=z)
        return region_score(out["entropy"][0], out["distribution"].argmax(axis=0))

    def finetune(net, labelled: list[str], seed: int) -> dict[str, Any]:
        pairs = [pool[i].slices() for i in labelled]
        images = np.concatenate([p[0] for p in pairs])
        labels = np.concatenate([p[1] for p in pairs])
        start = time.perf_counter()
        losses = train_on_arrays(
            net, diffusion, images, labels, s.al_train_iterations, batch_size=8, learning_rate=2e-4,
            lr_schedule="constant", seed=seed, device=ctx.device, log_every=0,
        )
        return {"iterations": len(losses), "seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-10:]))}

    dice0 = evaluate(network)
    rng = np.random.default_rng(0)
    state = {
        name: {"net": copy.deepcopy(network), "labelled": [start_id],
               "history": [{"round": 0, "added": start_id, "labelled": [start_id], "dice": dice0}]}
        for name in STRATEGIES
    }
    for round_ in range(1, s.al_rounds + 1):
        for name in STRATEGIES:
            st = state[name]
            candidates = [i for i in pool if i not in st["labelled"]]
            if not candidates:
                break
            scores = None
            if name == "uncertainty":
                scores = {i: score(st["net"], pool[i]) for i in candidates}
                pick = max(scores, key=scores.get)
            else:
                pick = str(rng.choice(candidates))
            st["labelled"].append(pick)
            train = finetune(st["net"], st["labelled"], seed=round_)
            st["history"].append({
                "round": round_, "added": pick, "labelled": list(st["labelled"]), "scores": scores,
                "dice": evaluate(st["net"]), "train": train,
            })
    results = {
        "active_learning": {name: state[name]["history"] for name in STRATEGIES},
        "pool": list(pool),
        "held_out": f"{HELD_OUT} (Colin27), taken out of the pool",
        "start": f"{start_id} labelled; round 0 model = {ctx.model_source}",
        "budget": (
            f"{s.al_rounds} round(s), {s.al_train_iterations} fine-tuning iterations (batch 8, lr 2e-4) per round and strategy; "
            f"scoring: 2-step DDIM x 3 members on every {s.al_score_stride}th axial slice; "
            "held-out Dice: 2-step DDIM x 2 members, native grid"
        ),
        "note": "robex_head_flipped is robex_head stored LAS: after reorientation to RAS it duplicates the labelled volume",
    }
    rows = []
    for round_ in range(s.al_rounds + 1):
        row: list[Any] = [round_]
        for name in STRATEGIES:
            history = state[name]["history"]
            entry = history[round_] if round_ < len(history) else None
            row += [entry["added"] if entry else None, entry["dice"] if entry else None]
        rows.append(row)
    table = md_table(["round", "uncertainty: added", "Dice", "random: added", "Dice"], rows)
    figure = _plot(ctx, state)
    return Section("active_learning", finite(results), table, [figure])


def _plot(ctx: Context, state: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, marker in zip(STRATEGIES, ("o-", "s--")):
        history = state[name]["history"]
        ax.plot([h["round"] for h in history], [h["dice"] for h in history], marker, label=name)
        for h in history[1:]:
            ax.annotate(h["added"], (h["round"], h["dice"]), fontsize=6, xytext=(3, 4 if name == "uncertainty" else -10), textcoords="offset points")
    ax.set_xlabel("round (volumes added)")
    ax.set_ylabel("Dice on held-out Colin27")
    ax.set_title("Simulated active learning (small budgets)")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, Path(ctx.out_dir) / "active_learning.png", CAVEAT)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["active_learning"]))
