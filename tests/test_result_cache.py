"""The infer task's result cache: each image keeps the results of its recent marks (undo is a look-up) within a
byte budget, the newest result always kept."""

import pytest
import torch

from monailabel_app.lib.interaction import CachedResult, ResultCache


def _result(value: int, size: int = 10) -> CachedResult:
    marks = torch.full((1, 1, size), -1, dtype=torch.int16)
    marks[0, 0, value] = 1
    return CachedResult({"probs": torch.full((1, 1, size), float(value))}, marks)


def test_marks_served_before_give_their_own_result_others_the_latest():
    cache = ResultCache()
    first, second = _result(1), _result(2)
    cache.put("image", first)
    cache.put("image", second)
    assert cache.get("image", first.marks) is first
    assert cache.get("image", second.marks) is second
    assert cache.get("image", _result(3).marks) is second and cache.get("image") is second
    assert cache.get("other") is None


def test_the_same_marks_with_other_click_settings_are_another_result_started_from_one_alike():
    cache = ResultCache()
    automatic = CachedResult({"probs": torch.zeros((1, 1, 10))}, torch.full((1, 1, 10), -1, dtype=torch.int16))
    ball = _result(1)
    cache.put("image", automatic)
    cache.put("image", ball)
    # the click again with click_spread 6: not served before; it starts from the automatic result, not the ball's
    assert cache.get("image", ball.marks, click_settings=(6, False)) is automatic
    spread = _result(1)
    spread.click_settings = (6, False)
    cache.put("image", spread)
    assert cache.get("image", spread.marks, click_settings=(6, False)) is spread
    assert cache.get("image", ball.marks) is ball  # not replaced by the spread one
    # a new click: from the latest with the same settings; with click_doubt too, another result again
    assert cache.get("image", _result(2).marks, click_settings=(6, False)) is spread
    assert cache.get("image", spread.marks, click_settings=(6, True)) is automatic


def test_byte_budget_drops_the_oldest_results_first_and_keeps_the_newest():
    one = _result(1).nbytes
    cache = ResultCache(max_bytes=2 * one)
    results = [_result(v) for v in range(4)]
    for r in results:
        cache.put("image", r)
    assert cache.get("image", results[0].marks) is results[3]  # dropped: the latest instead
    assert cache.get("image", results[2].marks) is results[2]
    tiny = ResultCache(max_bytes=1)
    tiny.put("image", results[0])
    assert tiny.get("image") is results[0]


def test_least_recently_used_image_goes_first():
    cache = ResultCache(max_keys=2)
    for key in ("a", "b"):
        cache.put(key, _result(1))
    cache.get("a")
    cache.put("c", _result(1))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_keys"):
        ResultCache(max_keys=0)


def test_image_outputs_count_the_memory_they_keep_alive():
    # the probabilities are a view (channel 0) of one resampling of two channels: both stay in memory
    resampled = torch.zeros(2, 10, 10, 10)
    result = _result(1)
    plain = result.nbytes
    result.image_outputs = {"pred": resampled[:1], "uncertainty": resampled[1:].clone()}
    assert result.nbytes - plain == 3 * 1000 * 4
