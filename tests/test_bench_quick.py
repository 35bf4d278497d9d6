"""The benchmark: its helpers (fast) and the quick run end to end (slow, still run in CI).

The quick run writes into a temporary folder (``BENCH_OUT``), never over ``bench/results``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import SHELL_OMP_WAIT_POLICY  # noqa: E402
from bench.active_learning import STRATEGIES, region_score, slabs  # noqa: E402
from bench.grid import GridVolume  # noqa: E402
from bench.judge import largest_component  # noqa: E402
from bench.models import EXPERIMENTS, NetworkCalls  # noqa: E402
from bench.protocol_report import UNCERTAINTY_METHODS, UNCERTAINTY_METRICS  # noqa: E402
from bench.report import finite, md_table  # noqa: E402
from bench.run_all import CONTRACT, SECTIONS  # noqa: E402
from bench.stats import paired_difference  # noqa: E402
from medsegdiff.diffusion import DiffusionConfig  # noqa: E402
from medsegdiff.network import MedSegDiffUNet  # noqa: E402
from medsegdiff.sampling import EnsembleSampler  # noqa: E402

QUICK_RUN_TIMEOUT_S = 25 * 60  # a few minutes on 2 idle cores; this only stops a hung run


# ------------------------------------------------------------------ helpers (fast)
def test_paired_difference_t_interval():
    # differences .1, .2, .3: mean .2, sd .1, t(.975, 2) = 4.3027 -> half width 4.3027 * .1 / sqrt(3) = .2484
    out = paired_difference({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.8, "b": 0.6, "c": 0.4})
    assert out["mean"] == pytest.approx(0.2)
    assert out["ci95"] == pytest.approx([0.2 - 0.24841, 0.2 + 0.24841], abs=1e-4)
    assert out["verdict"] == "tie"
    assert paired_difference({"a": 0.9, "b": 0.91}, {"a": 0.5, "b": 0.5})["verdict"] == "ahead"
    assert paired_difference({"a": 0.9}, {"a": 0.5})["verdict"] == "undecided"


def test_largest_component_drops_islands_and_keeps_diagonal_neighbours():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels: the brain
    mask[4, 4, 4] = True  # touches the cube's corner only: still the same piece (26-connectivity)
    mask[7, 0, 7] = True  # an island
    kept = largest_component(mask)
    assert kept.sum() == 28 and not kept[7, 0, 7] and kept[4, 4, 4]
    assert largest_component(np.zeros((4, 4, 4), dtype=bool)).sum() == 0


@pytest.mark.parametrize("members,member_batch", [(3, None), (3, 1), (4, 3)])
def test_network_calls_counted_by_the_hook_match_the_sampler(members, member_batch):
    torch.manual_seed(0)
    net = MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                         num_head_channels=8).eval()
    sampler = EnsembleSampler(DiffusionConfig(num_train_timesteps=20), "ddim", 4, members, member_batch_size=member_batch)
    with NetworkCalls(net) as counter:
        result = sampler(net, torch.randn(2, 1, 16, 16))
    chunks = math.ceil(members / (member_batch or members))
    assert counter.calls == result.nfe == 4 * chunks
    assert counter.images == 4 * members * 2  # every member of both images, at every step
    with NetworkCalls(net) as counter:
        pass
    assert counter.calls == 0


def test_slabs_partition_the_axial_slices():
    units = slabs(19, 8)
    assert units == [(0, 8), (8, 16), (16, 19)]


def test_grid_round_trip_keeps_the_label():
    native = np.zeros((30, 36, 20), np.uint8)
    native[8:22, 10:26, 5:15] = 1
    # a 1.5 mm scan put on a 3 mm grid and fitted to 12x12 (crops in-plane) then brought back
    label = native[::2, ::2, ::2]
    image = np.zeros((12, 12, 10), np.float32)
    fitted = np.zeros((12, 12, 10), np.uint8)
    fitted[:, :, :] = label[1:13, 3:15, :]
    volume = GridVolume("toy", image, fitted, native, (1.5, 1.5, 1.5), (15, 18, 10), 1)
    onehot = np.stack([1 - fitted, fitted]).astype(np.float32)
    back = volume.labels_to_native(onehot)
    assert back.shape == native.shape
    overlap = 2 * (back & native).sum() / (back.sum() + native.sum())
    assert overlap > 0.85
    slab = volume.slab(4, 8)  # grid slices 4..7 ~ native slices 8..15 (position i * 9 / 19)
    assert slab.image.shape == (12, 12, 4) and slab.native_label.shape[2] == 8
    assert slab.labels_to_native(onehot[:, :, :, 4:8]).shape == slab.native_label.shape


def test_region_score_uses_the_foreground_box():
    entropy = np.zeros((10, 10, 10), np.float32)
    entropy[4:6, 4:6, 4:6] = 1.0
    label = np.zeros_like(entropy, dtype=np.uint8)
    label[4:6, 4:6, 4:6] = 1
    assert region_score(entropy, label, margin=0) == pytest.approx(1.0)
    assert region_score(entropy, np.zeros_like(label)) == pytest.approx(entropy.mean())


def test_finite_and_table_formatting():
    assert finite({"a": [float("nan"), np.float32(0.5), np.int64(3)]}) == {"a": [None, 0.5, 3]}
    table = md_table(["x", "y"], [["a", 0.12345], ["b", None]])
    assert table.splitlines()[2] == "| a | 0.123 |" and "–" in table


# ------------------------------------------------------------------ the quick run (slow)
def _check_sampling(report: dict) -> None:
    sampling = report["sampling"]
    settings = report["settings"]
    runs = [*sampling["ddim"], sampling["ddpm"], sampling["ddim_members_one_after_another"]]
    for r in runs:
        # the hook counted exactly the calls the sampler says it made, one per step and member chunk
        assert r["nfe_counted"] == r["nfe_reported"], r
        chunks = math.ceil(r["members"] / r["member_batch_size"])
        assert r["nfe_counted"] == r["steps"] * chunks, r
        assert r["member_evaluations_counted"] == r["steps"] * r["members"], r
        assert len(r["dice_per_slice"]) == len(sampling["slices"]) == settings["held_out_slices"]
    assert sampling["ddpm"]["steps"] == settings["ddpm_quality_steps"]
    ours = next(r for r in sampling["ddim"] if r["steps"] == settings["default_steps"])
    assert report["nfe_ratio"] == pytest.approx(sampling["ddpm"]["member_evaluations_counted"] / ours["member_evaluations_counted"])
    assert sampling["speedup_original_protocol_derived"] == pytest.approx(
        sampling["speedup_sampler"] * sampling["speedup_batching"], rel=1e-3)


def _check_protocol(report: dict) -> None:
    settings = report["settings"]
    protocol = report["protocol"]
    assert [f["test"] for f in protocol["folds"]] == list(settings["folds"])
    assert all(f["test"] not in f["train"] for f in protocol["folds"])
    for model, by_fold in report["per_fold"].items():
        assert set(by_fold) == set(settings["folds"]), model
        if model == "deep_ensemble":
            continue
        seeds = settings["ensemble_size"] if model == "unet" else settings["seeds"]
        for fold, by_seed in by_fold.items():
            assert sorted(by_seed) == [str(s) for s in range(seeds)], (model, fold)
            for cell in by_seed.values():
                assert cell["iterations"] == settings["iterations"], (model, fold)  # the same for every model
                assert cell["curve"][-1]["iteration"] == settings["iterations"]
    assert set(report["baselines"]) >= {"unet", "plain_segmenter", "medsegdiff_no_ff", "medsegdiff_no_fusion",
                                        "mc_dropout", "deep_ensemble"}
    # every method of the run (the design experiments train only with BENCH_EXPERIMENTS=1)
    assert set(report["uncertainty"]) == set(UNCERTAINTY_METHODS) - set(EXPERIMENTS)
    for name, entry in report["uncertainty"].items():
        assert set(UNCERTAINTY_METRICS) <= set(entry) and "diversity" in entry, name
    assert report["uncertainty"]["deep_ensemble"]["diversity"]["members"] == settings["ensemble_size"]
    assert report["uncertainty"]["medsegdiff"]["diversity"]["members"] == settings["eval_members"]
    assert report["uncertainty"]["unet_softmax"]["diversity"] is None


def _check_active_learning(report: dict) -> None:
    al = report["active_learning"]
    settings = report["settings"]
    assert set(al["per_round"]) == set(STRATEGIES)
    for name, runs in al["runs"].items():
        assert len(runs) == settings["al_seeds"]
        for history in runs:
            assert [h["round"] for h in history] == list(range(settings["al_rounds"] + 1))
            added = [h["added"] for h in history[1:]]
            assert len(set(added)) == len(added) and all(a.startswith("itk_kmeans[") for a in added)


def _check_posterior(report: dict) -> None:
    posterior = report["sections"]["posterior"]["results"]["posterior"]
    sweep = [tuple(s) for s in report["settings"]["posterior_sweep"]]
    for steps, eta in sweep:  # every setting of the sweep, the axial and the three-view network, soft and hard
        for model in ("medsegdiff", "medsegdiff_triplanar"):
            for kind in ("soft", "hard"):
                assert posterior[f"{model} k{steps} eta{eta:g} {kind}"]["cases"] == len(report["settings"]["folds"])
    # hard members have no entropy of their own: all the uncertainty is their disagreement
    shares = [e["disagreement_fraction"]["mean"] for k, e in posterior.items() if k.endswith("hard")]
    assert shares and all(s == pytest.approx(1.0) for s in shares if s is not None), shares


def _check_tissue(report: dict) -> None:
    tissue = report["sections"]["tissue"]["results"]["tissue"]
    cases = 2 * report["settings"]["seeds"]  # each template held out once
    assert {m: e["cases"] for m, e in tissue.items()} == {m: cases for m in ("medsegdiff", "medsegdiff_no_background", "medsegdiff_dice", "unet")}
    assert set(tissue["medsegdiff"]["csf_per_case"]) == {f"{t}/s0" for t in ("cat12_tissue", "mni152_tissue")}
    assert tissue["medsegdiff"]["vs_unet"]["mean"]["cases"] == sorted(tissue["unet"]["mean_per_case"])


def _check_acceptance(report: dict) -> None:
    acceptance = report["sections"]["acceptance"]["results"]
    assert acceptance["clicks"] == 1 and len(acceptance["dice_per_click"]) == 2
    # the served label scored twice: by the worker against the RAS reference, and by the click loop on the grid
    # of the file as stored (FSL's MNI152 is stored LAS: a label left unflipped scores lower than its own copy)
    assert acceptance["dice_per_click"][0] == pytest.approx(acceptance["dice"], abs=2e-4)
    assert acceptance["painted_ball_dice_per_click"][0] == pytest.approx(acceptance["dice"], abs=2e-4)
    # the infer task was timed with the OpenMP environment the server would have (the shell's), not the bench's
    served = SHELL_OMP_WAIT_POLICY or "default"
    assert acceptance["omp_wait_policy"] == served
    assert report["sections"]["volume"]["results"]["omp_wait_policy"] == served


@pytest.mark.slow
@pytest.mark.timeout(2 * QUICK_RUN_TIMEOUT_S + 300)  # two runs; the suite's 900 s cut it on a machine 2x slower
def test_quick_bench_writes_every_contract_key_and_resumes(tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path), "BENCH_WORKERS": "2"}
    env.pop("BENCH_ONLY", None)
    env.pop("BENCH_ITERATIONS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    missing = [k for k in (*CONTRACT, "device", "torch", "cpu_count", "mode") if k not in report]
    assert not missing, f"latest.json lacks {missing}"
    assert report["mode"] == "quick" and report["torch"] == torch.__version__
    # the protocol cells were computed by the two worker processes, not by the main one; so were the cells of the
    # sections with many cells that share them (experiments, posterior), by two workers of their own
    lines = proc.stdout.splitlines()
    for section in ("protocol", "experiments", "posterior"):
        start = lines.index(f"[bench] {section} …")
        end = next(i for i in range(start, len(lines)) if lines[i].startswith(f"[bench] {section}: "))
        workers = {line.split(":")[0].split()[-1] for line in lines[start:end] if " worker " in line}
        assert len(workers) == 2, (section, workers)
    assert "[bench] protocol: test" not in proc.stdout
    assert set(report["sections"]) == set(SECTIONS)
    assert not [name for name, s in report["sections"].items() if "error" in s]
    _check_sampling(report)
    _check_protocol(report)
    _check_active_learning(report)
    _check_posterior(report)
    _check_tissue(report)
    _check_acceptance(report)
    for figure in ("dice_vs_nfe.png", "validation_curves.png", "active_learning.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure

    # a restart finds every cell and trains nothing again; the numbers stay the same
    again = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "protocol", "active_learning"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=QUICK_RUN_TIMEOUT_S,
    )
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "protocol: test" not in again.stdout and "active learning:" not in again.stdout
    resumed = json.loads((tmp_path / "latest.json").read_text())
    assert resumed["per_fold"] == report["per_fold"]
    # a partial run keeps the sections it did not redo (and their contract keys)
    assert set(resumed["sections"]) == set(SECTIONS)
    kept = {name for name, section in resumed["sections"].items() if section.get("kept_from_previous_run")}
    assert kept == set(SECTIONS) - {"protocol", "active_learning"}
    assert resumed["slice_seconds"] == report["slice_seconds"]
