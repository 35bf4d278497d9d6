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

from bench.active_learning import region_score  # noqa: E402
from bench.grid import GridVolume  # noqa: E402
from bench.report import auroc, finite, md_table  # noqa: E402
from bench.cross_subject import slab_split  # noqa: E402
from bench.run_all import CONTRACT, SECTIONS  # noqa: E402
from bench.uncertainty_quality import reliability  # noqa: E402

QUICK_RUN_TIMEOUT_S = 14 * 60  # the quick run takes about 5 min on 2 idle cores; this only stops a hung run


# ------------------------------------------------------------------ helpers (fast)
def test_auroc_matches_definition():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positives = np.array([0, 0, 1, 1])
    assert auroc(scores, positives) == pytest.approx(0.75)
    assert auroc(np.ones(4), positives) == pytest.approx(0.5)  # ties count half
    assert auroc(scores, np.zeros(4)) is None


def test_reliability_of_calibrated_probabilities_has_small_ece():
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=200_000)
    truth = rng.uniform(size=prob.size) < prob
    table = reliability(prob, truth)
    assert table["ece"] < 0.01
    assert sum(table["count"]) == prob.size
    overconfident = reliability(np.where(prob > 0.5, 1.0, 0.0), truth)
    assert overconfident["ece"] > 0.2


def test_slab_split_is_a_partition():
    train, test = slab_split(63)
    held = [z for a, b in test for z in range(a, b)]
    assert sorted(train + held) == list(range(63))
    assert test[0] == (8, 16) and all(b - a <= 8 for a, b in test)


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
def _check_contract(report: dict) -> None:
    missing = [k for k in (*CONTRACT, "device", "torch", "cpu_count", "cpu_model", "mode") if k not in report]
    assert not missing, f"latest.json lacks {missing}"
    assert report["mode"] == "quick"
    assert report["torch"] == torch.__version__
    assert report["cpu_count"] == os.cpu_count()
    assert report["device"] in ("cpu", "cuda") or report["device"].startswith("cuda")

    assert report["nfe_ratio"] == pytest.approx(100.0)  # 1000 steps x 5 chains / 10 steps x 5 members
    assert -1.0 <= report["dice_gap_vs_ddpm1000"] <= 1.0
    slice_seconds = report["slice_seconds"]
    assert all(v > 0 for v in slice_seconds.values())
    assert slice_seconds["speedup"] > 1.0

    assert report["volume_seconds"] > 0
    assert 50 < report["volume_peak_mb"] < 64_000

    for case in ("robex_to_colin27", "colin27_to_robex", "mni152_tissue_slabs"):
        for model in ("medsegdiff", "unet"):
            dice, hd95 = report["dice"][case][model], report["hd95"][case][model]
            dice_values = dice.values() if isinstance(dice, dict) else [dice]
            hd95_values = hd95.values() if isinstance(hd95, dict) else [hd95]
            assert all(0.0 <= d <= 1.0 for d in dice_values), (case, model, dice)
            assert all(h is None or h >= 0.0 for h in hd95_values), (case, model, hd95)
    assert set(report["dice"]["mni152_tissue_slabs"]["unet"]) == {"csf", "gm", "wm"}

    assert 0.0 <= report["uncertainty_auroc"] <= 1.0

    rounds = report["settings"]["al_rounds"]
    for strategy in ("uncertainty", "random"):
        history = report["active_learning"][strategy]
        assert [h["round"] for h in history] == list(range(rounds + 1))
        assert all(0.0 <= h["dice"] <= 1.0 for h in history)
        assert len({h["added"] for h in history}) == len(history)  # a volume is added once

    assert math.isfinite(report["train_iters_per_second"]) and report["train_iters_per_second"] > 0
    assert set(report["sections"]) == set(SECTIONS)
    assert not [name for name, s in report["sections"].items() if "error" in s]


@pytest.mark.slow
def test_quick_bench_writes_every_contract_key(tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path)}
    env.pop("BENCH_ONLY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    _check_contract(report)
    for figure in ("dice_vs_nfe.png", "reliability.png", "head_overlay.png", "active_learning.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    markdown = (tmp_path / "latest.md").read_text()
    assert "| nfe_ratio |" in markdown and "smoother" in markdown
