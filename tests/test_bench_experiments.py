"""The design-experiment section of the bench: which cells it asks the workers for, and how it compares them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.experiments import compare  # noqa: E402
from bench.protocol import selected  # noqa: E402

PLAN = [(head, model, seed) for head in ("a", "b") for model in ("medsegdiff", "unet", "medsegdiff_eps")
        for seed in range(3)]


def test_selected_cells_by_model_and_seed():
    assert selected(PLAN, "") == PLAN
    assert selected(PLAN, "medsegdiff:0, medsegdiff_eps:2") == [
        ("a", "medsegdiff", 0), ("a", "medsegdiff_eps", 2), ("b", "medsegdiff", 0), ("b", "medsegdiff_eps", 2)]
    assert selected(PLAN, "unet") == [c for c in PLAN if c[1] == "unet"]
    with pytest.raises(ValueError, match="medsegdiff_fused_skips:0.*BENCH_EXPERIMENTS"):
        selected(PLAN, "medsegdiff:0,medsegdiff_fused_skips:0")
    with pytest.raises(ValueError, match="medsegdiff:7"):
        selected(PLAN, "medsegdiff:7")


def _cell(dice, disagreement):
    return {"dice": dice, "hd95_mm": 5.0, "dice_lcc": dice, "hd95_lcc_mm": 4.0, "auroc_6mm": 0.7,
            "diversity": {"disagreement_fraction": disagreement, "pairwise_dice": 0.99}}


def test_compare_pairs_heads_over_seeds():
    cells = {
        "medsegdiff": {"a": [_cell(0.80, 0.1), _cell(0.90, 0.1)], "b": [_cell(0.70, 0.2)], "c": [_cell(0.60, 0.1)]},
        "medsegdiff_eps": {"a": [_cell(0.95, 0.5)], "b": [_cell(0.80, 0.4)], "c": [_cell(0.75, 0.3)]},
        "unet": {h: [{**_cell(0.7, 0.0), "diversity": None}] for h in "abc"},  # one softmax: no members
    }
    out = compare(cells)
    # head means: ours a .85, b .70, c .60; eps .95, .80, .75 -> differences .10, .10, .15: mean 0.11667
    diff = out["medsegdiff_eps"]["minus_medsegdiff"]["dice"]
    assert diff["mean"] == pytest.approx(0.116667, abs=1e-5) and diff["verdict"] == "ahead"
    assert out["medsegdiff"]["dice"]["mean"] == pytest.approx((0.8 + 0.9 + 0.7 + 0.6) / 4)
    # the diversity metrics are read from the cell's "diversity" entry
    assert out["medsegdiff_eps"]["disagreement_fraction"]["mean"] == pytest.approx(0.4)
    assert "minus_medsegdiff" not in out["medsegdiff"]
    assert out["unet"]["disagreement_fraction"]["mean"] is None and out["unet"]["dice"]["mean"] == pytest.approx(0.7)


def test_reliability_diagrams_pool_voxel_weighted():
    from bench.protocol_report import pooled_reliability

    a = {"count": [3, 0], "mean_probability": [0.2, None], "observed_rate": [0.0, None]}
    b = {"count": [1, 4], "mean_probability": [0.4, 0.9], "observed_rate": [1.0, 0.75]}
    mean_p, rate, count = pooled_reliability([a, b])
    # bin 0: (3 * .2 + 1 * .4) / 4 = .25, rate (0 + 1) / 4 = .25; bin 1: b alone
    assert mean_p.tolist() == pytest.approx([0.25, 0.9]) and rate.tolist() == pytest.approx([0.25, 0.75])
    assert count.tolist() == [4, 4]


def test_compare_pairs_only_the_seeds_both_variants_have():
    def seeded(dice: float, seed: int) -> dict:
        return {**_cell(dice, 0.1), "seed": seed}

    cells = {
        "medsegdiff": {h: [seeded(0.80, 0), seeded(0.90, 1), seeded(1.00, 2)] for h in "ab"},
        "medsegdiff_triplanar": {h: [seeded(0.85, 0), seeded(0.97, 1), seeded(0.95, 2)] for h in "ab"},
        "medsegdiff_eps": {h: [seeded(0.95, 0)] for h in "ab"},
    }
    out = compare(cells)
    assert out["medsegdiff_eps"]["minus_medsegdiff"]["dice"]["mean"] == pytest.approx(0.15)  # seed 0 alone
    assert out["medsegdiff_triplanar"]["minus_medsegdiff"]["dice"]["mean"] == pytest.approx(0.07 / 3)
    assert out["medsegdiff"]["dice"]["mean"] == pytest.approx(0.9)  # its own mean keeps every seed
