"""bench.widened: each model's AUROC with the uncertainty widened by a margin, paired against no margin."""

from __future__ import annotations

import pytest

from bench.widened import compare_margins


def _widened(plain: float, one: float, two: float, band: float = 0.7) -> dict:
    return {"0": {"auroc": plain, "auroc_6mm": band}, "1": {"auroc": one, "auroc_6mm": band + 0.05},
            "2": {"auroc": two, "auroc_6mm": band - 0.01}}


def test_each_margin_is_paired_with_the_same_cases_unwidened():
    cases = {"a:0": _widened(0.80, 0.85, 0.83), "a:1": _widened(0.90, 0.92, 0.88), "b:0": _widened(0.70, 0.79, 0.69)}
    out = compare_margins(cases)
    head = out["auroc"]
    assert head["0"] == {"mean": pytest.approx(0.80), "cases": 3}
    assert head["1"]["minus_unwidened"]["differences"] == pytest.approx([0.05, 0.02, 0.09])
    assert head["1"]["cases_lower"] == 0 and head["1"]["minus_unwidened"]["verdict"] == "tie"  # t(2) interval wide
    assert head["2"]["minus_unwidened"]["differences"] == pytest.approx([0.03, -0.02, -0.01])
    assert head["2"]["cases_lower"] == 2
    band = out["auroc_6mm"]
    assert band["1"]["minus_unwidened"]["mean"] == pytest.approx(0.05) and band["1"]["minus_unwidened"]["verdict"] == "ahead"
    assert band["2"]["cases_lower"] == 3


def test_served_recipe_and_unet_cells_are_read_and_compared_head_by_head(tmp_path):
    from bench.context import Context
    from bench.models import SERVED_RECIPE
    from bench.protocol import Cells, cell_key
    from bench.widened import run

    ctx = Context(tmp_path)
    cells = Cells(ctx)
    heads = ctx.settings.folds[:2]
    for i, head in enumerate(heads):
        cells.put(cell_key(head, SERVED_RECIPE, 0), {"widened": _widened(0.80 + i / 10, 0.90, 0.85)})
        cells.put(cell_key(head, "unet", 0), {"widened": _widened(0.75, 0.80, 0.78),
                                              "mc_dropout": {"widened": _widened(0.70, 0.72, 0.71)}})
    cells.put(cell_key(heads[0], "unet", 1), {"auroc": 0.5})  # an older cell without widened scores: not read
    section = run(ctx)
    results = section.results
    assert sorted(results["widened"][SERVED_RECIPE]["auroc"]["1"]["minus_unwidened"]["differences"]) == pytest.approx([0.0, 0.10])
    assert results["widened"]["unet_softmax"]["auroc"]["0"]["cases"] == 2
    versus = results["served_minus_baseline"]["unet_softmax"]["auroc"]
    assert versus["1"]["differences"] == pytest.approx([0.10, 0.10])
    assert sorted(results["served_minus_baseline"]["mc_dropout"]["auroc"]["0"]["differences"]) == pytest.approx([0.10, 0.20])
    assert "deep_ensemble" not in results["served_minus_baseline"]
