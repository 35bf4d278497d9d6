"""Benchmarks of MedSegDiff Label on real heads carried by registry packages (``make bench``).

One module per measurement; each has ``run(ctx) -> Section`` and runs alone with ``python -m bench.<module>``.
``python -m bench.run_all`` runs them all and writes ``bench/results/latest.{json,md}`` and the figures.

Environment: ``BENCH_QUICK=1`` runs tiny settings (CI), ``BENCH_OUT=<dir>`` writes somewhere other than
``bench/results``, ``BENCH_ONLY=sampling_cost,volume`` runs some sections only, ``BENCH_ITERATIONS=<n>`` sets the
protocol's training iterations (every model). The protocol and active-learning sections keep finished cells under
``<out>/cells`` and skip them on a restart.
"""

import os

# On a shared CPU (other jobs on the same cores) OpenMP's default spin-waiting makes torch 2-15x slower and
# erratic; passive waiting keeps the timings about the model. Set before torch loads; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
