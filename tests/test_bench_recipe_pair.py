"""bench.recipe_pair: the served recipe against the previous one, paired over the (head, seed) cases both have."""

from __future__ import annotations

import pytest

from bench.recipe_pair import pair_cells


def _cell(dice: float, share: float) -> dict:
    return {"dice_lcc": dice, "hd95_lcc_mm": 5.0, "auroc": 0.9, "auroc_6mm": 0.7, "ece_fg": 0.1,
            "diversity": {"disagreement_fraction": share}}


def test_pairs_only_the_cases_both_recipes_have():
    served = {"a:0": _cell(0.90, 0.6), "a:1": _cell(0.92, 0.7), "b:0": _cell(0.95, 0.5), "b:2": _cell(0.5, 0.1)}
    previous = {"a:0": _cell(0.91, 0.3), "a:1": _cell(0.90, 0.4), "b:0": _cell(0.96, 0.3), "c:0": _cell(0.1, 0.1)}
    out = pair_cells(served, previous)
    assert out["cases"] == ["a:0", "a:1", "b:0"]  # b:2 and c:0 have one recipe only
    dice = out["metrics"]["dice_lcc"]
    assert dice["served_minus_previous"]["differences"] == pytest.approx([-0.01, 0.02, -0.01])
    assert dice["cases_lower"] == 2
    assert dice["served"]["mean"] == pytest.approx((0.90 + 0.92 + 0.95) / 3)
    assert dice["per_head"]["a"] == {"served": pytest.approx(0.91), "previous": pytest.approx(0.905)}
    share = out["metrics"]["disagreement_fraction"]  # read from the cell's diversity
    assert share["served_minus_previous"]["mean"] == pytest.approx(0.8 / 3)
    assert share["served_minus_previous"]["verdict"] == "ahead" and share["cases_lower"] == 0


def test_a_run_folder_without_cells_of_both_recipes_gives_a_table_of_dashes(tmp_path):
    from bench.context import Context
    from bench.recipe_pair import run

    section = run(Context(tmp_path))  # no cells at all: nothing paired, nothing trained
    assert section.results["recipe_pair"]["cases"] == []
    assert "| Dice (largest component) | – | – | – | – | 0 of 0 |" in section.table


def test_a_candidate_with_cells_is_paired_against_the_served_recipe(tmp_path):
    from bench.context import Context
    from bench.models import SERVED_RECIPE
    from bench.protocol import Cells, cell_key
    from bench.recipe_pair import CANDIDATES, run

    ctx = Context(tmp_path)
    cells = Cells(ctx)
    head = ctx.settings.folds[0]
    cells.put(cell_key(head, SERVED_RECIPE, 0), _cell(0.93, 0.6))
    cells.put(cell_key(head, CANDIDATES[0], 0), _cell(0.90, 0.7))
    section = run(ctx)
    pair = section.results["candidates"][CANDIDATES[0]]
    assert pair["cases"] == [f"{head}:0"]
    assert pair["metrics"]["dice_lcc"]["served_minus_previous"]["differences"] == pytest.approx([-0.03])
    assert f"| Dice (largest component) | 0.930 | 0.900 | -0.030 |" in section.table.replace("−", "-")
    assert section.results["recipe_pair"]["cases"] == []  # no cells of the previous recipe
