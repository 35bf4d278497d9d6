"""``make bench``: every measurement in one process run, written to ``latest.json`` / ``latest.md`` + figures.

    .venv/bin/python -m bench.run_all                       # full run (about 80 min on 2 idle CPU cores)
    BENCH_QUICK=1 .venv/bin/python -m bench.run_all         # tiny settings for CI (a few minutes)
    BENCH_OUT=/tmp/b BENCH_ONLY=volume .venv/bin/python -m bench.run_all

The JSON is rewritten after every section, so an interrupted run keeps what it measured; the protocol and
active-learning sections also keep every finished cell under ``<out>/cells`` and skip it when restarted. A section that fails
is recorded with its error and the run goes on; the exit status is then 1.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .context import Context
from .machine import environment
from .report import md_table
from .settings import CAVEAT

__all__ = ["SECTIONS", "CONTRACT", "main"]

SECTIONS = ("training_speed", "sampling_cost", "volume", "acceptance", "protocol", "experiments", "posterior", "tissue", "active_learning",
            "interactive", "error_structure", "recipe_pair", "boundary_shift")

CONTRACT: dict[str, str] = {
    "nfe_ratio": "sampling_cost",
    "dice_gap_vs_ddpm1000": "sampling_cost",
    "slice_seconds": "sampling_cost",
    "sampling": "sampling_cost",
    "volume_seconds": "volume",
    "volume_peak_mb": "volume",
    "protocol": "protocol",
    "per_fold": "protocol",
    "baselines": "protocol",
    "uncertainty": "protocol",
    "dice": "protocol",
    "hd95": "protocol",
    "uncertainty_auroc": "protocol",
    "active_learning": "active_learning",
    "train_iters_per_second": "training_speed",
    "interactive": "interactive",
}
"""Top-level keys of ``latest.json`` → the section whose results carry them."""


def _write(report: dict[str, Any], out_dir: Path) -> None:
    tmp = out_dir / ".latest.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_dir / "latest.json")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return "–" if value is None else str(value)


def _summary(report: dict[str, Any]) -> str:
    """One readable line per scalar contract key (the structured ones are in their sections' tables)."""
    rows = []
    for key in CONTRACT:
        value = report.get(key)
        if value is None:
            text = "–"
        elif key in ("dice", "hd95"):
            text = ", ".join(f"{m} {_fmt(v)}" for m, v in value.items()) + " (mean over folds x seeds)"
        elif key == "slice_seconds":
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        elif isinstance(value, (dict, list)):
            text = f"see the {CONTRACT[key]} section"
        else:
            text = _fmt(value)
        rows.append([key, text])
    return md_table(["key", "value"], rows)


def _markdown(report: dict[str, Any], tables: dict[str, str]) -> str:
    env = report["environment"]
    lines = [
        "# MedSegDiff Label benchmark",
        "",
        f"- mode: **{env['mode']}**, device: {env['device']}"
        + (f" ({env['device_name']})" if env["device"] != "cpu" else "")
        + f", {env['cpu_count']} CPU(s) "
        f"({env['cpu_model']}), torch {env['torch']} ({env['torch_threads']} threads, OMP_WAIT_POLICY "
        f"{env['omp_wait_policy']}), monai {env['monai']}",
        f"- model: {report.get('model', '?')}",
        f"- wall time: {report.get('wall_seconds', 0):.0f} s; load average at start {env.get('load_average_at_start')}",
        f"- {CAVEAT}",
        "",
        "## Contract numbers",
        "",
        _summary(report),
    ]
    for name, section in report["sections"].items():
        lines += ["", f"## {name} ({section.get('seconds', 0):.0f} s)", ""]
        if "error" in section:
            lines += ["**failed**:", "", "```", section["error"][-2000:], "```"]
            continue
        lines.append(tables.get(name, ""))
        if section.get("figures"):
            lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in section["figures"])]
    return "\n".join(lines) + "\n"


def _keep_previous(report: dict[str, Any], tables: dict[str, str], out_dir: Path, names: list[str]) -> None:
    """Copy the sections (and their contract keys) of the previous ``latest.json`` that this run does not redo."""
    path = out_dir / "latest.json"
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    for name, section in previous.get("sections", {}).items():
        if name in names or name not in SECTIONS:
            continue
        report["sections"][name] = {**section, "kept_from_previous_run": True}
        for key, owner in CONTRACT.items():
            if owner == name and key in previous:
                report[key] = previous[key]
        tables[name] = section.get("table", "(kept from the previous run; its table was not stored)")


def main(argv: list[str] | None = None) -> int:
    """Run the sections named in ``argv`` (or ``BENCH_ONLY``, or all) and write the results."""
    names = list(argv or [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n] or SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    ctx = Context()
    start = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment(ctx.device),
        "settings": asdict(ctx.settings),
        "sections": {},
    }
    report.update({k: report["environment"][k] for k in ("device", "torch", "cpu_count", "cpu_model", "mode")})
    tables: dict[str, str] = {}
    if set(names) != set(SECTIONS):  # a partial run keeps the other sections of the last run
        _keep_previous(report, tables, ctx.out_dir, names)
    failed = False
    print(f"[bench] {report['mode']} run on {ctx.device} ({report['cpu_count']} CPUs), writing to {ctx.out_dir}", flush=True)
    try:
        for name in names:
            t0 = time.perf_counter()
            print(f"\n[bench] {name} …", flush=True)
            try:
                section = importlib.import_module(f"bench.{name}").run(ctx)
            except Exception:  # recorded; the other measurements still run
                failed = True
                error = traceback.format_exc()
                print(error, file=sys.stderr, flush=True)
                report["sections"][name] = {"error": error, "seconds": round(time.perf_counter() - t0, 1)}
            else:
                section.seconds = round(time.perf_counter() - t0, 1)
                report["sections"][name] = {
                    "results": section.results, "figures": section.figures, "seconds": section.seconds,
                    "table": section.table,
                    "load_average_after": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
                }
                tables[name] = section.table
                for key, owner in CONTRACT.items():
                    if owner == name and key in section.results:
                        report[key] = section.results[key]
                print(section.table, flush=True)
                print(f"[bench] {name}: {section.seconds:.0f} s", flush=True)
            report["model"] = ctx.model_source or report.get("model")
            report["wall_seconds"] = round(time.perf_counter() - start, 1)
            _write(report, ctx.out_dir)
            (ctx.out_dir / "latest.md").write_text(_markdown(report, tables))
    finally:
        ctx.close()
    print(f"\n[bench] done in {report['wall_seconds']:.0f} s: {ctx.out_dir / 'latest.json'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
