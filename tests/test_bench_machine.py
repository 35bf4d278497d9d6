"""The bench's fresh-process workers: a worker that times the infer task gets the server's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import SHELL_OMP_WAIT_POLICY  # noqa: E402
from bench.machine import served_environment  # noqa: E402

PRINT_POLICY = "import bench, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
PRINT_SHELL_POLICY = "import bench; print(bench.SHELL_OMP_WAIT_POLICY or 'unset')"


def _policy_seen(env: dict[str, str], code: str = PRINT_POLICY) -> str:
    """The ``OMP_WAIT_POLICY`` a process started with ``env`` has once it imported the bench package."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return proc.stdout.strip()


def test_a_served_worker_keeps_the_shells_wait_policy_and_others_get_the_benchs_default():
    shell = SHELL_OMP_WAIT_POLICY or "unset"  # as pytest was started, before the bench's import set its default
    assert _policy_seen(served_environment()) == shell
    without = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "BENCH_AS_SERVED")}
    assert _policy_seen(without) == "PASSIVE"  # the bench's own processes: passive unless the shell says otherwise
    assert _policy_seen({**without, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_a_bench_process_started_by_a_bench_process_knows_the_shells_policy():
    # this process imported the bench, so its environment holds the bench's default; a bench run it starts (as the
    # quick-bench test does) must still time the infer task with the shell's policy, not with that default
    assert os.environ["OMP_WAIT_POLICY"] == (SHELL_OMP_WAIT_POLICY or "PASSIVE")
    assert _policy_seen(dict(os.environ), PRINT_SHELL_POLICY) == (SHELL_OMP_WAIT_POLICY or "unset")
