"""What a measurement hands back (:class:`Section`), JSON rounding, markdown tables and figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .settings import CAVEAT

__all__ = ["Section", "finite", "md_table", "save_figure"]


@dataclass
class Section:
    """What a measurement hands back: numbers for the JSON, a markdown table, figure file names."""

    name: str
    results: dict[str, Any]
    table: str
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0



def finite(value: Any, digits: int = 4) -> Any:
    """Round floats for JSON; NaN / inf (e.g. HD95 of an empty prediction) become None."""
    if isinstance(value, dict):
        return {k: finite(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e4:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (also readable when printed)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path, caption: str = CAVEAT) -> str:
    """Save ``fig`` with the data caveat under it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True, color="0.3")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name

