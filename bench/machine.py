"""What the numbers were measured on, memory and CUDA timing helpers, and fresh-process workers."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import AS_SERVED, SHELL_OMP_WAIT_POLICY
from .settings import REPO, SETTINGS

__all__ = ["environment", "synchronize", "peak_rss_mb", "current_rss_mb", "run_worker", "served_environment", "worker_main"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import monai

    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "mode": "quick" if SETTINGS.quick else "full",
        "quick": SETTINGS.quick,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work so a timer reads the real duration (no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def run_worker(module: str, payload: dict[str, Any], timeout: float = 1800.0, served: bool = False) -> dict[str, Any]:
    """Run ``python -m <module> --worker IN OUT`` in a fresh process (clean peak-memory figures).

    ``served``: the worker gets the environment the server would have, the shell's (``OMP_WAIT_POLICY`` as the
    shell set it or unset, not the bench's passive default): for timings of the infer task as it is served.

    Raises:
        RuntimeError: the worker failed; the message carries the end of its output.
    """
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        source, target = Path(tmp) / "in.json", Path(tmp) / "out.json"
        source.write_text(json.dumps(payload))
        proc = subprocess.run(
            [sys.executable, "-m", module, "--worker", str(source), str(target)],
            cwd=REPO,
            env=served_environment() if served else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not target.is_file():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"{module} worker failed (exit {proc.returncode}):\n{tail}")
        return json.loads(target.read_text())


def served_environment() -> dict[str, str]:
    """This process's environment with the shell's ``OMP_WAIT_POLICY`` instead of the bench's default."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if SHELL_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = SHELL_OMP_WAIT_POLICY
    env[AS_SERVED] = "1"
    return env


def worker_main(work: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process was started by :func:`run_worker`, run ``work(payload)``, write its answer, return True."""
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        payload = json.loads(Path(sys.argv[2]).read_text())
        Path(sys.argv[3]).write_text(json.dumps(work(payload)))
        return True
    return False

