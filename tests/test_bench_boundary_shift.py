"""bench.boundary_shift: the uncertainty with the boundary shifted a voxel both ways, against the ensemble's own."""

from __future__ import annotations

import numpy as np
import pytest

from bench.boundary_shift import compare_margins, shift_scores


def _shift(plain: float, one: float, two: float, band: float = 0.7) -> dict:
    return {"0": {"auroc": plain, "auroc_6mm": band}, "1": {"auroc": one, "auroc_6mm": band + 0.05},
            "2": {"auroc": two, "auroc_6mm": band - 0.01}}


def test_each_margin_is_paired_with_the_same_cases_unshifted():
    cases = {"a:0": _shift(0.80, 0.85, 0.83), "a:1": _shift(0.90, 0.92, 0.88), "b:0": _shift(0.70, 0.79, 0.69)}
    out = compare_margins(cases)
    head = out["auroc"]
    assert head["0"] == {"mean": pytest.approx(0.80), "cases": 3}
    assert head["1"]["minus_unshifted"]["differences"] == pytest.approx([0.05, 0.02, 0.09])
    assert head["1"]["cases_lower"] == 0 and head["1"]["minus_unshifted"]["verdict"] == "tie"  # t(2) interval wide
    assert head["2"]["minus_unshifted"]["differences"] == pytest.approx([0.03, -0.02, -0.01])
    assert head["2"]["cases_lower"] == 2
    band = out["auroc_6mm"]
    assert band["1"]["minus_unshifted"]["mean"] == pytest.approx(0.05) and band["1"]["minus_unshifted"]["verdict"] == "ahead"
    assert band["2"]["cases_lower"] == 3


def test_a_missed_rim_the_ensemble_is_sure_of_is_found_once_the_boundary_may_shift():
    from bench.grid import GridVolume

    grid = np.indices((16, 16, 16)) - 8
    distance = np.sqrt((grid ** 2).sum(axis=0))
    reference = (distance <= 5).astype(np.uint8)  # the reference ends a voxel further out than the ensemble
    p = np.clip(4.5 - distance, 0.0, 1.0).astype(np.float32)  # certain inside, soft on its own boundary only
    members = np.stack([1 - p, p])[None]
    volume = GridVolume("toy", p, reference, reference, (3.0,) * 3, (16, 16, 16), 1, np.ones_like(reference, bool))
    scores = shift_scores(volume, members)
    assert scores["1"]["auroc"] > scores["0"]["auroc"] + 0.05
    assert scores["1"]["auroc_6mm"] > scores["0"]["auroc_6mm"] + 0.05


def test_served_recipe_and_unet_cases_are_read_and_compared_head_by_head(tmp_path, monkeypatch):
    from bench.boundary_shift import run
    from bench.context import Context
    from bench.models import SERVED_RECIPE
    from bench.protocol import Cells, cell_key

    monkeypatch.setenv("BENCH_PARTIAL", "1")  # summarise what is there: no networks to sample here
    ctx = Context(tmp_path)
    cells = Cells(ctx)
    heads = ctx.settings.folds[:2]
    for i, head in enumerate(heads):
        cells.put(f"{cell_key(head, SERVED_RECIPE, 0)}__shift", {"shift": _shift(0.80 + i / 10, 0.90, 0.85)})
        cells.put(f"{cell_key(head, 'unet_softmax', 0)}__shift", {"shift": _shift(0.75, 0.80, 0.78)})
    cells.put(f"{cell_key(heads[0], 'deep_ensemble', 0)}__shift", {"shift": _shift(0.70, 0.72, 0.71)})
    results = run(ctx).results
    served = results["boundary_shift"][SERVED_RECIPE]["auroc"]["1"]["minus_unshifted"]["differences"]
    assert sorted(served) == pytest.approx([0.0, 0.10])
    assert results["boundary_shift"]["unet_softmax"]["auroc"]["0"]["cases"] == 2
    assert results["served_minus_baseline"]["unet_softmax"]["auroc"]["1"]["differences"] == pytest.approx([0.10, 0.10])
    assert results["served_minus_baseline"]["deep_ensemble"]["auroc"]["0"]["cases"] == [heads[0]]  # one head has it
