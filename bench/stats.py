"""Summaries over folds and seeds: mean ± sd, and the paired per-case difference with a 95 % t-interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["mean_sd", "paired_difference"]


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample sd and count of the finite values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def paired_difference(a: Mapping[str, float | None], b: Mapping[str, float | None], level: float = 0.95) -> dict[str, Any]:
    """Per-case differences a - b over the cases both have; mean and a ``level`` t-interval.

    ``verdict`` is ``ahead`` / ``behind`` when the interval excludes 0, else ``tie`` (``undecided`` with < 2 cases).
    """
    cases = [c for c in a if c in b and a[c] is not None and b[c] is not None]
    d = np.asarray([a[c] - b[c] for c in cases], dtype=float)
    out: dict[str, Any] = {"cases": cases, "differences": d.tolist(), "mean": float(d.mean()) if d.size else None}
    if d.size < 2:
        return {**out, "ci95": None, "verdict": "undecided"}
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    low, high = out["mean"] - half, out["mean"] + half
    verdict = "ahead" if low > 0 else "behind" if high < 0 else "tie"
    return {**out, "ci95": [low, high], "verdict": verdict}
