"""Cell formatting shared by the README generator's tables (``bench.readme_table``, ``bench.readme_targets``)."""

from __future__ import annotations

from typing import Any

__all__ = ["delta", "fmt", "met", "pm", "results", "table"]


def fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pm(stat: dict[str, Any]) -> str:
    return "–" if stat.get("mean") is None else fmt(stat["mean"]) + (f" ± {fmt(stat['sd'])}" if stat.get("sd") is not None else "")


def delta(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    ci = d.get("ci95")
    text = f"{d['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    return text + (" **behind**" if d.get("verdict") == "behind" else f" {d.get('verdict', '')}")


def results(report: dict[str, Any], section: str) -> dict[str, Any] | None:
    """The results of one bench section of ``latest.json`` (None when the run has not measured it)."""
    return report.get("sections", {}).get(section, {}).get("results")


def met(ok: bool | None) -> str:
    """A target's "met" cell: yes, **no**, or – when it was not measured."""
    return "–" if ok is None else ("yes" if ok else "**no**")


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]
