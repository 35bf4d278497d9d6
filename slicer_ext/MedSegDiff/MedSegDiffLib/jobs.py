"""Run a blocking call (HTTP request) in a thread and let the GUI poll it with a timer.

The function must not touch the MRML scene or Qt widgets: those belong to the main thread, which calls
``poll()`` from a ``qt.QTimer`` and imports the result once it returns True.

3D Slicer's PythonQt holds the GIL while the Qt event loop idles, so a worker thread only runs while the
main thread runs Python. ``poll()`` therefore waits up to ``MAIN_THREAD_WAIT_S`` on an ``Event`` (which
releases the GIL) in every timer tick of ``TIMER_INTERVAL_MS``: the worker gets most of the time and the
user interface still handles its events between ticks.
"""

import threading

__all__ = ["MAIN_THREAD_WAIT_S", "TIMER_INTERVAL_MS", "BackgroundJob", "BackgroundWork"]

TIMER_INTERVAL_MS = 50
"""Interval of the widget's QTimer while background work runs."""

MAIN_THREAD_WAIT_S = 0.04
"""How long each timer tick hands the GIL to background threads (``Event.wait``)."""


class BackgroundJob:
    """A function running in a daemon thread, with thread-safe progress and result.

    Args:
        function: called as ``function(report, *args, **kwargs)``; ``report(fraction, message)``
            publishes progress (fraction 0-1 or None when unknown).
        name: thread name, for debugging.
    """

    def __init__(self, function, *args, name="MedSegDiffJob", **kwargs):
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._progress = (0.0, "")
        self._result = None
        self._error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _report(self, fraction=None, message=""):
        with self._lock:
            self._progress = (fraction, message)

    def _run(self):
        try:
            result = self._function(self._report, *self._args, **self._kwargs)
            with self._lock:
                self._result = result
        except Exception as e:  # handed to the main thread, which shows it
            with self._lock:
                self._error = e
        finally:
            self._done.set()

    def start(self):
        """Start the thread; returns self."""
        self._thread.start()
        return self

    @property
    def done(self):
        """True once the function returned or raised."""
        return self._done.is_set()

    @property
    def progress(self):
        """Latest ``(fraction, message)`` reported by the function."""
        with self._lock:
            return self._progress

    @property
    def error(self):
        """The exception the function raised, or None."""
        with self._lock:
            return self._error

    def poll(self, wait_s=MAIN_THREAD_WAIT_S):
        """Main thread's timer tick: let the worker run for up to ``wait_s`` seconds; returns ``done``."""
        return self._done.wait(wait_s)

    def wait(self, timeout=None):
        """Block until done (for scripts and tests); returns ``done``."""
        return self._done.wait(timeout)

    def result(self):
        """The function's return value; re-raises its exception. Call only when ``done``."""
        if not self.done:
            raise RuntimeError("BackgroundJob.result() called before the job finished: check .done first")
        with self._lock:
            if self._error is not None:
                raise self._error
            return self._result


class BackgroundWork:
    """The module's background work as the widget's timer drives it: one job at a time and a training poller.

    ``tick()`` is the whole timer callback apart from showing the state: it hands the GIL to the threads and,
    once the job has ended, calls its ``onDone(result)`` or ``onError(exception)`` in the calling thread.
    """

    def __init__(self):
        self.job = None
        self.poller = None
        self._onDone = self._onError = None

    @property
    def busy(self):
        """True while a job runs."""
        return self.job is not None

    @property
    def active(self):
        """True while a job runs or a training poller polls: the timer must keep ticking."""
        return self.job is not None or self.poller is not None

    def start(self, function, *args, onDone, onError):
        """Start ``function(report, *args)`` in a thread; ``RuntimeError`` when another job still runs."""
        if self.job is not None:
            raise RuntimeError("Another request to the server is still running; wait for it to finish.")
        self._onDone, self._onError = onDone, onError
        self.job = BackgroundJob(function, *args).start()
        return self.job

    def watch(self, poller):
        """Start a ``TrainingPoller`` thread and keep it running from ``tick()`` until it ends."""
        self.poller = poller
        poller.start()

    def tick(self, wait_s=MAIN_THREAD_WAIT_S):
        """One timer tick: returns the job's ``(fraction, message)``, or None when no job ran."""
        progress = None
        if self.job is not None:
            job = self.job
            done = job.poll(wait_s)
            progress = job.progress
            if done:
                self.job = None
                if job.error is None:
                    self._onDone(job.result())
                else:
                    self._onError(job.error)
        elif self.poller is not None and self.poller.tick(wait_s):
            self.poller = None
        return progress
