"""1. Sampling cost vs quality: the original MedSegDiff protocol against our few-step batched ensemble.

(a) original: DDPM, 1000 steps, 5 chains one after another at batch 1, the whole network at every step.
(b) ours: DDIM with k steps, 5 members in one batch, the image-only features computed once per image.

Both sample the same trained model on held-out slices (Colin27 at 3 mm: a head the sample model never saw).
Dice is per slice at the model grid, reported as the median. Also measured: what reusing the image-only
features saves, and batched vs one-after-another members on this machine.

The wall time of (a) is measured on a run of its sequential batch-1 steps and scaled to 5 x 1000 steps (every
step costs the same); its Dice comes from really running the 5 x 1000-step chains (batched, which does not
change the result) on fewer slices, as stated in the output.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from medsegdiff.diffusion import make_scheduler, set_sampling_steps
from medsegdiff.metrics import dice_per_class
from medsegdiff.sampling import EnsembleSampler

from .context import Context
from .machine import synchronize
from .report import Section, finite, md_table, save_figure
from .settings import CAVEAT

__all__ = ["run", "held_out_slices"]


class _RecomputeImageFeatures(nn.Module):
    """Wraps the network so every step runs the image branch again (``net(x, t, context=image)``)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.num_classes = network.num_classes

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return image  # nothing is precomputed: the sampler hands the raw image back at every step

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps, context=image_features)


def held_out_slices(ctx: Context, count: int, min_brain: float = 0.08) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``count`` axial Colin27 slices at 3 mm, evenly spread over the slices with at least ``min_brain`` brain."""
    volume = ctx.grid("colin27")
    fraction = (volume.label > 0).mean(axis=(0, 1))
    candidates = np.flatnonzero(fraction >= min_brain)
    picks = [int(candidates[i]) for i in np.linspace(0, len(candidates) - 1, count + 2).round().astype(int)[1:-1]]
    images, labels = volume.slices(picks)
    return images, labels, picks


def _dice(result_label: torch.Tensor, reference: np.ndarray) -> list[float]:
    return [dice_per_class(result_label[b, 0].cpu().numpy(), reference[b, 0])[0] for b in range(result_label.shape[0])]


def _timed(sampler: EnsembleSampler, network: nn.Module, image: torch.Tensor, seed: int = 0):
    start = time.perf_counter()
    result = sampler(network, image, seed=seed)
    synchronize(image.device)
    return result, time.perf_counter() - start


def _sequential_ddpm_step_seconds(network: nn.Module, diffusion, image: torch.Tensor, steps: int) -> float:
    """Seconds per step of one original-protocol chain: DDPM, batch 1, the whole network every step."""
    device = image.device
    scheduler = make_scheduler(diffusion, "ddpm")
    set_sampling_steps(scheduler, diffusion.num_train_timesteps, device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((1, network.num_classes, *image.shape[2:]), generator=generator, device=device)
    timesteps = scheduler.timesteps[: steps + 2]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            if i == 2:  # two warm-up steps
                start = time.perf_counter()
            output = network(x, t.expand(1), context=image)
            x = scheduler.step(output, int(t), x, generator=generator)[0]
    synchronize(device)
    return (time.perf_counter() - start) / steps


def run(ctx: Context) -> Section:
    s = ctx.settings
    network, diffusion, _ = ctx.model
    device = ctx.device
    images_np, labels_np, picks = held_out_slices(ctx, s.held_out_slices)
    images = torch.from_numpy(images_np).to(device)
    members = s.members
    _timed(EnsembleSampler(diffusion, "ddim", 2, members), network, images[:1])  # warm-up

    # 1. DDIM sweep, one slice at a time (members batched, features reused); the order of k rotates per slice
    sweep: dict[int, dict[str, list[float]]] = {k: {"seconds": [], "dice": []} for k in s.ddim_steps}
    nfe: dict[int, tuple[int, int]] = {}
    for i in range(len(images)):
        order = list(s.ddim_steps[i % len(s.ddim_steps):]) + list(s.ddim_steps[: i % len(s.ddim_steps)])
        for k in order:
            result, seconds = _timed(EnsembleSampler(diffusion, "ddim", k, members), network, images[i : i + 1])
            sweep[k]["seconds"].append(seconds)
            sweep[k]["dice"] += _dice(result.label, labels_np[i : i + 1])
            nfe[k] = (result.nfe, result.member_evaluations)

    # 2. the original protocol's quality: the 5 DDPM chains really run (batched: same result, less time)
    m = s.ddpm_quality_slices
    if m < len(images):  # spread over the slices, ends excluded
        quality_idx = [int(i) for i in np.linspace(0, len(images) - 1, m + 2).round().astype(int)[1:-1]]
    else:
        quality_idx = list(range(len(images)))
    ddpm_sampler = EnsembleSampler(diffusion, "ddpm", s.ddpm_quality_steps, members)
    ddpm_result, ddpm_quality_seconds = _timed(ddpm_sampler, network, images[quality_idx])
    ddpm_dice = _dice(ddpm_result.label, labels_np[quality_idx])

    # 3. the original protocol's wall time: sequential batch-1 steps, scaled to 5 chains x 1000 steps
    original = EnsembleSampler(diffusion, "ddpm", diffusion.num_train_timesteps, members, member_batch_size=1)
    original_evaluations = original.num_inference_steps * original.num_ensemble
    step_seconds = [
        _sequential_ddpm_step_seconds(network, diffusion, images[i : i + 1], s.ddpm_timed_steps)
        for i in quality_idx
    ]
    ddpm_slice_seconds = float(np.median(step_seconds)) * original_evaluations

    # 4. image-only features reused vs recomputed, and 5. members batched vs one after another (k = default)
    k0 = s.default_steps
    recompute = _RecomputeImageFeatures(network)
    batched = EnsembleSampler(diffusion, "ddim", k0, members)
    sequential = EnsembleSampler(diffusion, "ddim", k0, members, member_batch_size=1)
    times: dict[str, list[float]] = {"reuse": [], "recompute": [], "batched": [], "sequential": []}
    max_diff = 0.0
    for i in range(min(s.comparison_slices, len(images))):
        image = images[i : i + 1]
        runs = [("reuse", batched, network), ("recompute", batched, recompute), ("sequential", sequential, network)]
        if i % 2:
            runs.reverse()
        outputs = {}
        for name, sampler, net in runs:
            outputs[name], seconds = _timed(sampler, net, image)
            times[name].append(seconds)
        times["batched"].append(times["reuse"][-1])
        max_diff = max(max_diff, float((outputs["reuse"].probs - outputs["recompute"].probs).abs().max()))
    med = {name: float(np.median(v)) for name, v in times.items()}

    # summary
    ours = sweep[k0]
    ours_seconds = float(np.median(ours["seconds"]))
    ours_evaluations = nfe[k0][1]
    ours_dice_on_ddpm_slices = float(np.median([ours["dice"][i] for i in quality_idx]))
    rows_json = [
        {
            "sampler": "ddim",
            "steps": k,
            "members": members,
            "nfe_batched": nfe[k][0],
            "member_evaluations": nfe[k][1],
            "seconds_per_slice_median": float(np.median(sweep[k]["seconds"])),
            "dice_median": float(np.median(sweep[k]["dice"])),
            "dice_per_slice": sweep[k]["dice"],
        }
        for k in s.ddim_steps
    ]
    ddpm_json = {
        "sampler": "ddpm",
        "steps": diffusion.num_train_timesteps,
        "members": members,
        "member_evaluations": original_evaluations,
        "seconds_per_slice": ddpm_slice_seconds,
        "seconds_per_slice_method": (
            f"median over {len(quality_idx)} slice(s) of {s.ddpm_timed_steps} timed sequential batch-1 DDPM steps "
            f"(whole network each step) x {original_evaluations} steps"
        ),
        "quality_steps": s.ddpm_quality_steps,
        "quality_slices": [picks[i] for i in quality_idx],
        "quality_note": (
            "5 chains of DDPM run batched on these slices (batching does not change the chains)"
            + ("" if s.ddpm_quality_steps == diffusion.num_train_timesteps else
               f"; QUICK MODE: strided {s.ddpm_quality_steps}-step DDPM stands in for the 1000-step chains")
        ),
        "dice_median": float(np.median(ddpm_dice)),
        "dice_per_slice": ddpm_dice,
        "quality_run_seconds": ddpm_quality_seconds,
    }
    results = {
        "held_out": "Colin27 (mricron-data), axial slices at 3 mm, 80x80; never seen by the sample model",
        "slices": picks,
        "model": ctx.model_source,
        "ddim": rows_json,
        "ddpm1000": ddpm_json,
        "nfe_ratio": original_evaluations / ours_evaluations,
        "nfe_ratio_definition": f"member evaluations: DDPM {diffusion.num_train_timesteps} x {members} / DDIM {k0} x {members}",
        "dice_gap_vs_ddpm1000": ours_dice_on_ddpm_slices - ddpm_json["dice_median"],
        "dice_gap_definition": f"median Dice of DDIM-{k0} minus DDPM-1000 on the same {len(quality_idx)} slice(s); > 0 = ours better",
        "slice_seconds": {
            f"ours_ddim{k0}_members_batched": ours_seconds,
            "original_ddpm1000_sequential": ddpm_slice_seconds,
            "speedup": ddpm_slice_seconds / ours_seconds,
        },
        "feature_reuse": {
            "seconds_reused": med["reuse"],
            "seconds_recomputed": med["recompute"],
            "saving_ratio": med["recompute"] / med["reuse"],
            "max_abs_prob_difference": max_diff,
            "slices": min(s.comparison_slices, len(images)),
            "steps": k0,
        },
        "member_batching": {
            "seconds_batched": med["batched"],
            "seconds_sequential": med["sequential"],
            "sequential_over_batched": med["sequential"] / med["batched"],
            "slices": min(s.comparison_slices, len(images)),
            "steps": k0,
        },
    }

    table_rows = [
        [f"DDIM {k}", f"{members} batched, features reused", r["member_evaluations"], r["seconds_per_slice_median"], r["dice_median"]]
        for k, r in zip(s.ddim_steps, rows_json)
    ]
    table_rows.append([
        f"DDPM {diffusion.num_train_timesteps} (original)", f"{members} one after another, batch 1",
        original_evaluations, ddpm_slice_seconds, ddpm_json["dice_median"],
    ])
    table = md_table(["sampler", "members", "NFE (member evals)", "s / slice", "Dice (median)"], table_rows)
    table += "\n\n" + md_table(
        ["comparison (DDIM %d, %d members)" % (k0, members), "s / slice (median)", "ratio"],
        [
            ["image features reused", med["reuse"], 1.0],
            ["image features recomputed every step", med["recompute"], med["recompute"] / med["reuse"]],
            ["members in one batch", med["batched"], 1.0],
            ["members one after another", med["sequential"], med["sequential"] / med["batched"]],
        ],
    )
    table += (
        f"\n\nnfe_ratio = {results['nfe_ratio']:.0f}; Dice gap vs DDPM-1000 = {results['dice_gap_vs_ddpm1000']:+.3f} "
        f"on {len(quality_idx)} slice(s); DDPM Dice: {ddpm_json['quality_note']}."
    )
    same_slices = {"steps": k0, "member_evaluations": ours_evaluations, "dice_median": ours_dice_on_ddpm_slices}
    figure = _plot(ctx, rows_json, ddpm_json, same_slices, len(picks))
    return Section("sampling_cost", finite(results), table, [figure])


def _plot(ctx: Context, rows: list[dict[str, Any]], ddpm: dict[str, Any], same: dict[str, Any], n_slices: int) -> str:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    x = [r["member_evaluations"] for r in rows]
    ax1.plot(x, [r["dice_median"] for r in rows], "o-", label="DDIM k steps, 5 members batched")
    for r in rows:
        ax1.annotate(f"k={r['steps']}", (r["member_evaluations"], r["dice_median"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax1.plot([ddpm["quality_steps"] * ddpm["members"]], [ddpm["dice_median"]], "s", color="C3",
             label=f"DDPM {ddpm['quality_steps']} steps, 5 chains ({len(ddpm['quality_slices'])} slice(s))")
    ax1.plot([same["member_evaluations"]], [same["dice_median"]], "o", mfc="none", color="C3", markersize=9,
             label=f"DDIM {same['steps']} on the same {len(ddpm['quality_slices'])} slice(s)")
    ax1.set_xscale("log")
    ax1.set_xlabel("network evaluations per slice (steps x members)")
    ax1.set_ylabel("Dice (median over slices)")
    ax1.set_title(f"Held-out Colin27, {n_slices} axial slices at 3 mm")
    ax1.legend(fontsize=7, loc="best")
    ax2.plot(x, [r["seconds_per_slice_median"] for r in rows], "o-", label="DDIM, members batched")
    ax2.plot([ddpm["member_evaluations"]], [ddpm["seconds_per_slice"]], "s", color="C3", label="DDPM 1000, sequential batch 1")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("network evaluations per slice")
    ax2.set_ylabel("wall seconds per slice")
    ax2.set_title(f"Cost on {ctx.device.type} ({ctx.settings.quick and 'quick' or 'full'} run)")
    ax2.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, ctx.out_dir / "dice_vs_nfe.png", CAVEAT)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["sampling_cost"]))
