"""Run a blocking call (HTTP request) in a thread and let the GUI poll it with a timer.

The function must not touch the MRML scene or Qt widgets: those belong to the main thread, which reads
``progress`` / ``done`` from a ``qt.QTimer`` and imports the result when ``done`` is True.
"""

import threading

__all__ = ["BackgroundJob"]


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
