"""Benchmarks of MedSegDiff Label on real heads carried by registry packages (``make bench``).

One module per measurement; each has ``run(ctx) -> Section`` and runs alone with ``python -m bench.<module>``.
``python -m bench.run_all`` runs them all and writes ``bench/results/latest.{json,md}`` and the figures.

Environment: ``BENCH_QUICK=1`` runs tiny settings (CI), ``BENCH_OUT=<dir>`` writes somewhere other than
``bench/results``, ``BENCH_ONLY=sampling_cost,volume`` runs some sections only, ``BENCH_ITERATIONS=<n>`` sets the
protocol's training iterations (every model). The protocol and active-learning sections keep finished cells under
``<out>/cells`` and skip them on a restart.
"""

import os

SHELL_MARK = "BENCH_SHELL_OMP_WAIT_POLICY"
"""Where the first bench process of a run notes the shell's ``OMP_WAIT_POLICY`` ("" when unset), so that the
processes it starts (workers, a bench run started by a test) know it although they inherit the bench's default."""
os.environ.setdefault(SHELL_MARK, os.environ.get("OMP_WAIT_POLICY", ""))
SHELL_OMP_WAIT_POLICY = os.environ[SHELL_MARK] or None
"""The shell's ``OMP_WAIT_POLICY`` (None: unset), before the bench's default below: what the server would run with."""

AS_SERVED = "BENCH_AS_SERVED"
"""Set to 1 in a worker that times the infer task as the server runs it (``bench.machine.run_worker(served=True)``):
it keeps the shell's OpenMP environment instead of the bench's default."""

# On a shared CPU (other jobs on the same cores) OpenMP's default spin-waiting makes torch 2-15x slower and
# erratic; passive waiting keeps the timings about the model. Set before torch loads; an explicit value wins.
# The server sets nothing, and on an idle machine passive waiting can cost it 2x (stop 34: a whole Colin27 head
# 21-31 s against 14-16 s), so a worker timing the infer task runs without this default.
if os.environ.get(AS_SERVED) != "1":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
