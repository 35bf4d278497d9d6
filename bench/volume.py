"""2. A whole real T1 head through the infer task at default settings: wall seconds and peak memory.

The app's infer task (``monailabel_app/lib/infers/medsegdiff.py``: RAS, 3 mm, normalisation, DDIM at the app's default steps x 5
members, label and uncertainty back on the image's grid) runs in a fresh subprocess on a temporary copy of the
sample datastore's ``colin27_head`` (1 mm, 181x217x181; the committed sample model was trained on it, so its Dice
here checks the path, it is not a held-out score), so the peak resident
memory of that process is the cost of one request (plus the imports, reported separately). When the task cannot
be imported or run, ``MedSegDiffInferer`` with the same pre-processing runs instead and ``volume_path`` says so.

Then :data:`INTERACTION_CLICKS` requests each add a click at the centre of the largest error, timed with their
phases (``volume_interaction``): what an annotator waits for per click, less the HTTP transfer.

The task runs 16 slices x all members per network pass; ``inferer_batching`` times ``MedSegDiffInferer`` on
central Colin27 slices with that setting and with 2 slices (all members, or one) per pass.

Every timing here runs in the worker, with the OpenMP environment the server would have (the shell's), not the
bench's passive-waiting default (``bench/__init__.py``): on an idle machine that default can double the seconds.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .context import Context
from .machine import current_rss_mb, peak_rss_mb, run_worker, synchronize, worker_main
from .report import Section, finite, md_table
from .settings import REPO

__all__ = ["run"]

VOLUME_ID = "colin27_head"


def _write_input(ctx: Context) -> tuple[Path, Path, str]:
    """Copy the head (quick mode: a central axial slab) and its reference mask into the temp folder."""
    root = ctx.sample_datastore()
    image_path = root / f"{VOLUME_ID}.nii.gz"
    reference_path = (root / f"../sample_reference/{VOLUME_ID}_mask.nii.gz").resolve()
    folder = ctx.tmp / "volume_datastore"
    folder.mkdir(exist_ok=True)
    target, target_ref = folder / image_path.name, folder / "reference_mask.nii.gz"
    slab = ctx.settings.volume_slab_mm
    if slab is None:
        shutil.copy(image_path, target)
        shutil.copy(reference_path, target_ref)
        return target, target_ref, f"{VOLUME_ID} (whole head)"
    image, reference = nib.load(str(image_path)), nib.load(str(reference_path))
    canonical = nib.as_closest_canonical(image)
    canonical_ref = nib.as_closest_canonical(reference)
    depth = int(round(slab / canonical.header.get_zooms()[2]))
    centre = canonical.shape[2] // 2
    z = slice(centre - depth // 2, centre - depth // 2 + depth)
    nib.save(canonical.slicer[:, :, z], str(target))
    nib.save(canonical_ref.slicer[:, :, z], str(target_ref))
    return target, target_ref, f"{VOLUME_ID}, QUICK MODE: central {slab:g} mm axial slab"


INTERACTION_CLICKS = 3
"""Clicks after the plain request, each a request of its own (the marks so far), as an annotator refines."""
BATCHINGS = ((2, 1), (2, None), (16, None))
"""(slices per batch, members per batch; None = all) of the batching comparison; (16, None) is the infer task's
setting (on every device since stop 34; (2, None) was its CPU setting before)."""


def _batching(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """In the served worker: seconds per slice of ``MedSegDiffInferer`` on central Colin27 slices for each of
    :data:`BATCHINGS`. Two rounds in opposite orders, mean per setting (the machine's load drifts)."""
    import torch

    from medsegdiff.checkpoint import load_checkpoint
    from medsegdiff.inferer import MedSegDiffInferer
    from medsegdiff.sample_data import LOADERS
    from medsegdiff.sampling import EnsembleSampler

    from .grid import to_model_grid

    network, diffusion, _ = load_checkpoint(payload["model"], payload["device"])
    volume = to_model_grid(LOADERS["load_colin27"]())
    settings = payload["batching"]
    count, steps, members = settings["slices"], settings["steps"], settings["members"]
    centre = int(np.argmax((volume.label > 0).sum(axis=(0, 1))))
    image = torch.from_numpy(np.ascontiguousarray(volume.image[:, :, centre - count // 2 : centre - count // 2 + count]))
    image = image[None, None].to(payload["device"])
    seconds: dict[tuple, list[float]] = {b: [] for b in BATCHINGS}
    for order in (BATCHINGS, BATCHINGS[::-1]):
        for slices, per_pass in order:
            sampler = EnsembleSampler(diffusion, "ddim", steps, members, member_batch_size=per_pass)
            inferer = MedSegDiffInferer(sampler, slice_batch_size=slices)
            start = time.perf_counter()
            inferer(image, network)
            synchronize(payload["device"])
            seconds[(slices, per_pass)].append((time.perf_counter() - start) / count)
    base = float(np.mean(seconds[BATCHINGS[0]]))
    return [
        {"slice_batch_size": slices, "member_batch_size": per_pass or members, "steps": steps,
         "slices": count, "seconds_per_slice": float(np.mean(v)), "speedup_vs_2_slices_1_member": base / float(np.mean(v))}
        for (slices, per_pass), v in seconds.items()
    ]


def run(ctx: Context) -> Section:
    ctx.model  # make sure a model file exists (stand-in when the sample model is missing)
    image, reference, description = _write_input(ctx)
    payload = {
        "model": str(ctx.model_path),
        "image": str(image),
        "reference": str(reference),
        "device": ctx.device.type,
        "app_dir": str(REPO / "monailabel_app"),
        "tmp": str(ctx.tmp / "volume_worker"),
        "batching": {"slices": 2 if ctx.settings.quick else 6, "members": ctx.settings.members,
                     "steps": ctx.settings.default_steps if not ctx.settings.quick else 2},
    }
    try:
        out = run_worker("bench.volume", {**payload, "path": "infer_task"}, served=True)
    except Exception as e:  # noqa: BLE001 - the app is being written; fall back and say why
        reason = str(e).strip().splitlines()[-1][:300] if str(e).strip() else e.__class__.__name__
        out = run_worker("bench.volume", {**payload, "path": "inferer"}, served=True)
        out["volume_path"] += f" (the infer task failed: {reason})"
    results = {
        "volume_seconds": out["seconds"],
        "volume_peak_mb": out["peak_rss_mb"],
        "omp_wait_policy": out["omp_wait_policy"],
        "volume_path": out["volume_path"],
        "image": description,
        "shape": out["shape"],
        "rss_before_request_mb": out["rss_before_mb"],
        "peak_increase_mb": out["peak_rss_mb"] - out["rss_before_mb"],
        "cuda_peak_mb": out.get("cuda_peak_mb"),
        "nfe": out.get("nfe"),
        "settings": out.get("settings"),
        "dice_vs_reference": out.get("dice"),
        "uncertainty_auroc_native": out.get("auroc"),
        "model": ctx.model_source,
        "inferer_batching": out["inferer_batching"],
        "volume_interaction": out.get("interaction"),
        "volume_interaction_without_doubt": out.get("interaction_without_doubt"),
    }
    table = md_table(
        ["volume", "path", "seconds", "peak RSS MB", "peak over pre-request MB", "Dice", "entropy AUROC"],
        [[description, out["volume_path"].split(" (")[0], out["seconds"], out["peak_rss_mb"],
          results["peak_increase_mb"], out.get("dice"), out.get("auroc")]],
    )
    rows = []
    for key, how in (("interaction", "defaults"), ("interaction_without_doubt", "click_doubt false, right after")):
        clicked = out.get(key) or {}
        if clicked.get("clicks"):
            phases = clicked["phases_mean"]
            rows.append([f"{description}, {how}", clicked["clicks"], clicked["seconds_per_interaction"], phases["pre"],
                         phases["infer"], phases["post"], phases["write"]])
    if rows:
        table += "\n\n" + md_table(
            ["interaction through the infer task (same volume, click at the largest error)", "clicks", "s / request",
             "pre s", "sampling s", "post s", "write s"], rows)
    table += "\n\n" + md_table(
        ["MedSegDiffInferer batching (Colin27 central slices)", "s / slice", "speed-up vs (2 slices, 1 member)"],
        [[f"{b['slice_batch_size']} slice(s) x {b['member_batch_size']} member(s) per pass, DDIM {b['steps']}",
          b["seconds_per_slice"], b["speedup_vs_2_slices_1_member"]] for b in results["inferer_batching"]],
    )
    table += f"\n\nEvery timing above ran in a worker with the server's OpenMP environment (OMP_WAIT_POLICY {out['omp_wait_policy']})."
    return Section("volume", finite(results), table)


# --------------------------------------------------------------------------------------------
# Worker (a fresh process)
# --------------------------------------------------------------------------------------------
def _infer_task(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    sys.path.insert(0, payload["app_dir"])
    from lib.infers.medsegdiff import UNCERTAINTY_FILE_KEY, MedSegDiffInfer  # the app's package is "lib"
    from lib.model_files import ModelFiles, ModelInfo

    model = Path(payload["model"])
    files = ModelFiles("medsegdiff", model, Path(payload["tmp"]) / "model")
    files.output_dir.mkdir(parents=True, exist_ok=True)
    task = MedSegDiffInfer(files, ModelInfo.read(model), "bench", progress=False)
    before = current_rss_mb()
    start = time.perf_counter()
    label_file, result = task({"image": payload["image"]})
    seconds = time.perf_counter() - start
    label = np.asanyarray(nib.load(label_file).dataobj)
    uncertainty = np.asanyarray(nib.load(result[UNCERTAINTY_FILE_KEY]).dataobj)
    for path in (label_file, result[UNCERTAINTY_FILE_KEY]):
        Path(path).unlink(missing_ok=True)
    peak = peak_rss_mb()  # of the plain request: the clicks that follow are timed, not weighed
    info = {
        "interaction": _interaction(task, payload["image"], label, uncertainty, payload["reference"], payload.get("clicks", 0)),
        # the same clicks without the flags of click_doubt, right after: what the flags cost, side by side
        "interaction_without_doubt": _interaction(task, payload["image"], label, uncertainty, payload["reference"],
                                                  payload.get("clicks", 0), {"click_doubt": False}),
        "peak_rss_mb": peak,
        "seconds": seconds,
        "rss_before_mb": before,
        "nfe": result.get("nfe"),
        "settings": result.get("params"),
        "volume_path": "monailabel infer task lib.infers.medsegdiff.MedSegDiffInfer, in-process in a subprocess, default parameters (first request of a fresh process)",
    }
    return label, uncertainty, info


def _interaction(task, image: str, label: np.ndarray, uncertainty: np.ndarray, reference_path: str, clicks: int = 0,
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """After the plain request: ``clicks`` (default :data:`INTERACTION_CLICKS`) requests, each adding a click at the
    centre of the largest error (as the interactive bench clicks), the whole request timed and its phases (MONAI
    Label's ``latencies``: pre-transforms, sampling, post-transforms, writing the files). Dice after each click,
    beside the painted-ball baseline: the same click rule painting a ball of the infer task's default click
    radius (in mm) into the label, no model. The entropy's AUROC for the wrong voxels over the head before the
    clicks and after the last one. ``params``: more parameters of every click request."""
    from lib.infers.medsegdiff import UNCERTAINTY_FILE_KEY

    from medsegdiff.evaluation import auroc, binary_dice
    from medsegdiff.guidance import largest_error_click
    from medsegdiff.interaction import click_balls

    from .grid import head_mask

    reference_image = nib.load(reference_path)
    reference = np.asanyarray(reference_image.dataobj) > 0
    if reference.shape != label.shape:
        return {"skipped": f"reference of shape {list(reference.shape)} for a label of shape {list(label.shape)}"}
    reference = reference.astype(np.uint8)
    radius_mm = task.info()["interaction"]["click_radius_default"] * task.model_info.spacing[0]  # model voxels → mm
    radius = max(int(round(radius_mm / float(min(reference_image.header.get_zooms()[:3])))), 0)
    current, marks, requests = label > 0, {"foreground": [], "background": []}, []
    head = head_mask(np.asanyarray(nib.load(image).dataobj).astype(np.float32)) | reference.astype(bool)
    auroc_before = auroc(uncertainty[head], (current != reference)[head])
    painted = current.astype(np.uint8)
    dice, painted_dice = [binary_dice(current.astype(np.uint8), reference)], [binary_dice(painted, reference)]
    for _ in range(clicks or INTERACTION_CLICKS):
        click = largest_error_click(current.astype(np.uint8), reference)
        ball_click = largest_error_click(painted, reference)
        if click is None:
            break
        marks["foreground" if click[1] else "background"].append([int(v) for v in click[0]])
        start = time.perf_counter()
        label_file, result = task({"image": image, **marks, **(params or {})})
        seconds = time.perf_counter() - start
        current = np.asanyarray(nib.load(label_file).dataobj) > 0
        uncertainty = np.asanyarray(nib.load(result[UNCERTAINTY_FILE_KEY]).dataobj)
        for path in (label_file, result[UNCERTAINTY_FILE_KEY]):
            Path(path).unlink(missing_ok=True)
        if ball_click is not None:
            painted[click_balls(reference.shape, [ball_click[0]], radius).numpy()] = ball_click[1]
        dice.append(binary_dice(current.astype(np.uint8), reference))
        painted_dice.append(binary_dice(painted, reference))
        phases = {k: result["latencies"][k] for k in ("pre", "infer", "post", "write")}
        requests.append({"seconds": seconds, "phases": phases, "nfe": result["nfe"],
                         "resampled_slices": result["interaction"].get("resampled_slices")})
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {
        "clicks": len(requests),
        "seconds_per_interaction": mean([r["seconds"] for r in requests]),
        "phases_mean": {k: mean([r["phases"][k] for r in requests]) for k in ("pre", "infer", "post", "write")},
        "dice": dice,
        "painted_ball_dice": painted_dice,
        "painted_ball_radius_mm": radius_mm,
        "uncertainty_auroc_head": {"before": auroc_before, "after": auroc(uncertainty[head], (current != reference)[head])},
        "per_request": requests,
    }


def _inferer(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from medsegdiff.checkpoint import load_checkpoint
    from medsegdiff.sample_data import Scan

    from .grid import to_model_grid
    from .segment import segment_diffusion

    network, diffusion, _ = load_checkpoint(payload["model"], payload["device"])
    before = current_rss_mb()
    start = time.perf_counter()
    image = nib.as_closest_canonical(nib.load(payload["image"]))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    scan = Scan("volume", data, np.zeros(data.shape, np.uint8), image.affine, {"brain": 1})
    volume = to_model_grid(scan)
    out = segment_diffusion(network, diffusion, volume, steps=10, members=5)
    label = volume.labels_to_native(out["distribution"])
    uncertainty = volume.to_native(out["entropy"])[0]
    seconds = time.perf_counter() - start
    info = {
        "seconds": seconds,
        "rss_before_mb": before,
        "nfe": out["nfe"],
        "settings": {"sampler": "ddim", "num_inference_steps": 10, "num_ensemble": 5, "fusion": "mean"},
        "volume_path": "medsegdiff.inferer.MedSegDiffInferer with the bench's pre-processing (RAS, normalise, 3 mm, 80x80)",
    }
    return label, uncertainty, info


def _work(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    from medsegdiff.evaluation import auroc, surface_band
    from medsegdiff.metrics import dice_per_class, hd95_per_class

    from .grid import head_mask

    if payload["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        label, uncertainty, info = (_infer_task if payload["path"] == "infer_task" else _inferer)(payload)
    except Exception:
        traceback.print_exc()
        raise
    peak = peak_rss_mb()
    reference = np.asanyarray(nib.as_closest_canonical(nib.load(payload["reference"])).dataobj) > 0
    image = nib.load(payload["image"])
    if payload["path"] == "infer_task":  # it answers on the grid of the file as stored; the reference is RAS
        label = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(label, image.affine)).dataobj)
        uncertainty = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(uncertainty, image.affine)).dataobj)
    label = label > 0
    canonical = nib.as_closest_canonical(image)
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    band = surface_band(reference, spacing, 6.0)
    head = head_mask(np.asanyarray(canonical.dataobj).astype(np.float32)) | reference | label
    return {
        **info,
        "peak_rss_mb": info.get("peak_rss_mb", peak),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if payload["device"] == "cuda" else None,
        "shape": list(label.shape),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),  # the server's, not the bench's default
        "dice": dice_per_class(label.astype(np.uint8), reference.astype(np.uint8))[0],
        "hd95_mm": hd95_per_class(label.astype(np.uint8), reference.astype(np.uint8), 1, spacing)[0],
        "auroc": auroc(uncertainty, label != reference),
        "auroc_head": auroc(uncertainty[head], (label != reference)[head]),
        "auroc_6mm": auroc(uncertainty[band], (label != reference)[band]),
        # after the request and its peak memory: the batching comparison, in the same (served) environment
        "inferer_batching": _batching(payload) if payload.get("batching") else None,
    }


if __name__ == "__main__":
    if not worker_main(_work):
        from .run_all import main

        raise SystemExit(main(["volume"]))
