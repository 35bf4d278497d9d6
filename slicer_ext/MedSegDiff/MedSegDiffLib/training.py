"""Training progress from the server: ``GET /train/`` (task status) and ``/info/`` ``train_stats``.

MONAI Label writes ``train_stats`` after every epoch (``epoch``, ``total_epochs``, ``best_metric`` and the
validation metrics under ``eval``); the task status says whether the training process is still running.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from .client import ServerError
from .jobs import MAIN_THREAD_WAIT_S

__all__ = ["FINISHED_STATES", "TrainingPoller", "TrainingProgress", "training_progress"]

FINISHED_STATES = ("DONE", "ERROR", "STOPPED")


@dataclass
class TrainingProgress:
    """One snapshot of a training run.

    Attributes:
        status: task status (SUBMITTED, RUNNING, DONE, ERROR, STOPPED), or NONE when no task exists.
        epoch: epochs completed so far (0 before the first epoch ends).
        total_epochs: planned epochs, or None while unknown.
        fraction: progress 0-1.
        dice: latest validation Dice (key metric of the evaluator), or None before the first validation.
        best_dice: best validation Dice of this run, or None.
        message: last line of the training log, for display.
        error: text of a polling error; polling stops after one.
        task: the raw task dict from the server.
    """

    status: str = "NONE"
    epoch: int = 0
    total_epochs: Optional[int] = None
    fraction: float = 0.0
    dice: Optional[float] = None
    best_dice: Optional[float] = None
    message: str = ""
    error: Optional[str] = None
    task: dict = field(default_factory=dict)

    def summary(self):
        """One line for the module: status, epochs, the error or the best Dice."""
        epochs = f"{self.epoch}/{self.total_epochs}" if self.total_epochs else f"{self.epoch}"
        text = self.error or f"{self.status}, epoch {epochs}"
        return text if self.best_dice is None else f"{text}, best Dice {self.best_dice:.3f}"

    @property
    def finished(self):
        """True when the run ended (done, failed, stopped), polling failed, or there is no task."""
        return self.status in FINISHED_STATES or self.status == "NONE" or self.error is not None


def _float_or_none(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def training_progress(task, stats, baseline_start_ts=None):
    """Combine a train task and its model's ``train_stats`` into a ``TrainingProgress``.

    Args:
        task: ``GET /train/`` answer (None when no task exists).
        stats: ``info()["train_stats"][model]`` (may be empty or from an earlier run).
        baseline_start_ts: ``stats["start_ts"]`` seen before this run was started; stats with that
            start time belong to the previous run and are ignored.
    """
    if not task:
        return TrainingProgress()
    status = str(task.get("status", "NONE")).upper()
    details = task.get("details") or []
    progress = TrainingProgress(status=status, task=task, message=str(details[-1]) if details else "")
    stats = stats or {}
    if stats and (baseline_start_ts is None or stats.get("start_ts") != baseline_start_ts):
        progress.epoch = int(stats.get("epoch") or 0)
        total = stats.get("total_epochs") or (task.get("request") or {}).get("max_epochs")
        progress.total_epochs = int(total) if total else None
        evaluation = stats.get("eval") or {}
        key = evaluation.get("key_metric_name")
        metrics = evaluation.get("metrics") or {}
        progress.dice = _float_or_none(metrics.get(key)) if key else None
        progress.best_dice = _float_or_none(evaluation.get("best_metric", stats.get("best_metric")))
        if progress.dice is None:
            progress.dice = progress.best_dice
    else:
        total = (task.get("request") or {}).get("max_epochs")
        progress.total_epochs = int(total) if total else None
    if status == "DONE":
        progress.fraction = 1.0
    elif progress.total_epochs:
        progress.fraction = min(1.0, progress.epoch / progress.total_epochs)
    return progress


class TrainingPoller:
    """Polls the server until the training run finishes; safe to run in a background thread.

    Args:
        client: a ``MedSegDiffClient``.
        model: trainer name (key of ``info()["trainers"]``).
        callback: called with each ``TrainingProgress`` (from the polling thread).
        interval: seconds between polls.
        stop_event: ``threading.Event``; set it to stop polling early.
        baseline_start_ts: see ``training_progress``.
    """

    def __init__(self, client, model, callback=None, interval=2.0, stop_event=None, baseline_start_ts=None):
        self.client = client
        self.model = model
        self.callback = callback
        self.interval = interval
        self.stop_event = stop_event or threading.Event()
        self.baseline_start_ts = baseline_start_ts
        self.latest = TrainingProgress()
        self.finished = threading.Event()

    def poll_once(self):
        """Ask the server once; returns (and stores in ``latest``) the progress."""
        try:
            task = self.client.train_status()
            stats = (self.client.info().get("train_stats") or {}).get(self.model) or {}
            progress = training_progress(task, stats, self.baseline_start_ts)
        except ServerError as e:
            progress = TrainingProgress(status=self.latest.status, error=str(e))
        self.latest = progress
        if self.callback is not None:
            self.callback(progress)
        return progress

    def run(self, timeout=None):
        """Poll until the run finishes, ``stop_event`` is set or ``timeout`` seconds pass; returns the last progress."""
        try:
            return self._run(timeout)
        finally:
            self.finished.set()

    def _run(self, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.poll_once()
            if progress.finished or self.stop_event.is_set():
                return progress
            if deadline is not None and time.monotonic() >= deadline:
                return progress
            if self.stop_event.wait(self.interval):
                return progress

    def tick(self, wait_s=MAIN_THREAD_WAIT_S):
        """Main thread's timer tick: let the polling thread run for up to ``wait_s`` seconds (see ``jobs``).

        Returns:
            True once polling has ended.
        """
        return self.finished.wait(wait_s)

    def start(self):
        """Run ``run()`` in a daemon thread and return the thread."""
        thread = threading.Thread(target=self.run, name="MedSegDiffTrainingPoller", daemon=True)
        thread.start()
        return thread
