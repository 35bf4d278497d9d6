"""Bounded inference: a few requests run, a bounded number wait in FIFO order, the rest get HTTP 503.

MONAI Label 0.8.5's ``POST /infer/{model}`` is an ``async`` endpoint that calls the (synchronous) inference
directly, so one inference blocks the server's event loop: every other request, ``/info/`` included, waits
until it ends, and a semaphore inside the infer task never sees a second request (measured: two 4 s
requests take 4 s and 7.5 s, ``/info/`` sent in between 7 s, with ``MONAI_LABEL_INFER_CONCURRENCY=2``).

* :class:`InferenceGate`: at most ``max_concurrent`` inferences run; up to ``max_queue`` more wait for a slot,
  first come first served; one more is refused with :class:`ServerBusy` (an HTTP 503 ``HTTPException`` with
  ``Retry-After``). Threads wait with :meth:`InferenceGate.slot` / :meth:`~InferenceGate.acquire`, coroutines
  with :meth:`~InferenceGate.acquire_async` (no thread is held while waiting).
* :class:`InferenceGateMiddleware`: the HTTP side. Each ``/infer/`` request takes a slot (waiting in the queue,
  or 503 when the queue is full) and runs in a worker thread with its own event loop, so the server keeps
  answering other requests (and queueing or refusing extra ones) while a model runs.

:meth:`InferenceGate.from_env` reads ``MEDSEGDIFF_MAX_CONCURRENT_INFER`` (running, default 1) and
``MEDSEGDIFF_INFER_QUEUE`` (waiting, default 16; 0 refuses at once whatever finds every slot taken).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from starlette.exceptions import HTTPException

__all__ = ["ServerBusy", "InferenceGate", "InferenceGateMiddleware", "MAX_CONCURRENT_ENV", "QUEUE_ENV"]

MAX_CONCURRENT_ENV = "MEDSEGDIFF_MAX_CONCURRENT_INFER"
"""Environment variable: inferences that run at the same time (default 1)."""

QUEUE_ENV = "MEDSEGDIFF_INFER_QUEUE"
"""Environment variable: inferences that may wait for a slot (default 16); one more gets 503."""


class ServerBusy(HTTPException):
    """Every inference slot and queue place is taken: HTTP 503 with a ``Retry-After`` header."""

    def __init__(self, detail: str, retry_after_s: int = 10) -> None:
        super().__init__(status_code=503, detail=detail, headers={"Retry-After": str(retry_after_s)})


class _Ticket:
    """A place in the queue; ``granted`` once a released slot was handed to it."""

    __slots__ = ("notify", "granted")

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify
        self.granted = False


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class InferenceGate:
    """At most ``max_concurrent`` inferences at a time, up to ``max_queue`` waiting (FIFO), the rest refused.

    A released slot is handed straight to the longest-waiting request, so a newcomer never overtakes the queue.

    Args:
        max_concurrent: number of slots (1 on a single GPU or a small CPU).
        max_queue: requests that may wait for a slot; 0 refuses at once when every slot is taken.
        retry_after_s: the ``Retry-After`` a refused client is sent.

    Example:
        >>> gate = InferenceGate(1, max_queue=4)
        >>> with gate.slot():
        ...     pass  # run the model
    """

    def __init__(self, max_concurrent: int = 1, max_queue: int = 0, *, retry_after_s: int = 10) -> None:
        self.max_concurrent = _count(max_concurrent, "max_concurrent", 1)
        self.max_queue = _count(max_queue, "max_queue", 0)
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiting: deque[_Ticket] = deque()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, retry_after_s: int = 10) -> "InferenceGate":
        """The gate ``MEDSEGDIFF_MAX_CONCURRENT_INFER`` (default 1) and ``MEDSEGDIFF_INFER_QUEUE`` (default 16) ask for."""
        environ = os.environ if environ is None else environ

        def read(name: str, default: int, minimum: int) -> int:
            text = environ.get(name, "").strip()
            try:
                return _count(int(text) if text else default, name, minimum)
            except ValueError:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {text!r}") from None

        return cls(read(MAX_CONCURRENT_ENV, 1, 1), read(QUEUE_ENV, 16, 0), retry_after_s=retry_after_s)

    @property
    def in_flight(self) -> int:
        """Inferences running now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Inferences waiting for a slot now."""
        return len(self._waiting)

    def busy_message(self, what: str = "inference") -> str:
        return (
            f"server busy: {self._in_flight} of {self.max_concurrent} {what} slot(s) in use and "
            f"{len(self._waiting)} of {self.max_queue} queue place(s) taken; retry in about {self.retry_after_s} s"
        )

    # ------------------------------------------------------------------ taking and giving back slots
    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it (never blocks, never queues)."""
        with self._lock:
            if self._in_flight >= self.max_concurrent or self._waiting:
                return False
            self._in_flight += 1
            return True

    def _enter(self, notify: Callable[[], None], what: str) -> _Ticket | None:
        """Take a free slot (``None``) or a place in the queue (its ticket); :class:`ServerBusy` when full."""
        with self._lock:
            if self._in_flight < self.max_concurrent and not self._waiting:
                self._in_flight += 1
                return None
            if len(self._waiting) >= self.max_queue:
                raise ServerBusy(self.busy_message(what), self.retry_after_s)
            ticket = _Ticket(notify)
            self._waiting.append(ticket)
            return ticket

    def _withdraw(self, ticket: _Ticket) -> bool:
        """Leave the queue (True), unless a slot was granted meanwhile (False: the caller holds it now)."""
        with self._lock:
            if ticket.granted:
                return False
            self._waiting.remove(ticket)
            return True

    def release(self) -> None:
        """Give a slot back: to the longest-waiting request if there is one."""
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("InferenceGate.release() without a matching acquire")
            if not self._waiting:
                self._in_flight -= 1
                return
            ticket = self._waiting.popleft()
            ticket.granted = True  # the slot changes hands: in_flight stays
        ticket.notify()

    def acquire(self, timeout: float | None = None, what: str = "inference") -> None:
        """Take a slot, waiting in the queue if needed (blocks this thread).

        Raises:
            ServerBusy: the queue is full, or ``timeout`` seconds passed in it.
        """
        granted = threading.Event()
        ticket = self._enter(granted.set, what)
        if ticket is None or granted.wait(timeout) or not self._withdraw(ticket):
            return
        raise ServerBusy(f"no {what} slot within {timeout} s; " + self.busy_message(what), self.retry_after_s)

    async def acquire_async(self, what: str = "inference") -> None:
        """Take a slot, waiting in the queue without blocking the event loop.

        Raises:
            ServerBusy: the queue is full.
        """
        loop = asyncio.get_running_loop()
        granted = loop.create_future()

        def notify() -> None:  # called by release(), from any thread
            try:
                loop.call_soon_threadsafe(lambda: granted.done() or granted.set_result(None))
            except RuntimeError:  # the loop is closed: nobody will use the slot
                self.release()

        ticket = self._enter(notify, what)
        if ticket is None:
            return
        try:
            await granted
        except BaseException:  # cancelled while waiting (server shutting down)
            if not self._withdraw(ticket):
                self.release()  # granted just now: pass it on
            raise

    @contextmanager
    def slot(self, what: str = "inference", timeout: float | None = None) -> Iterator[None]:
        """Hold a slot for the ``with`` block, queueing if allowed; raises :class:`ServerBusy` (503) when refused."""
        self.acquire(timeout, what)
        try:
            yield
        finally:
            self.release()


class InferenceGateMiddleware:
    """ASGI middleware: ``/infer/`` requests wait for ``gate``'s slots (503 when its queue is full) and run off the loop.

    Args:
        app: the ASGI app to wrap.
        gate: the shared :class:`InferenceGate`; default :meth:`InferenceGate.from_env`.
        path_prefixes: request paths (after ``root_path``) that count as inference.
        offload: run admitted requests in a worker thread with its own event loop (needed for MONAI Label
            0.8.5, whose infer endpoint blocks the loop; without it no second request is ever seen).
    """

    def __init__(
        self,
        app,
        gate: InferenceGate | None = None,
        path_prefixes: Iterable[str] = ("/infer/",),
        offload: bool = True,
    ) -> None:
        self.app = app
        self.gate = gate if gate is not None else InferenceGate.from_env()
        self.path_prefixes = tuple(path_prefixes)
        self.offload = offload

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.path_prefixes):
            await self.app(scope, receive, send)
            return
        try:
            await self.gate.acquire_async()
        except ServerBusy as busy:
            await _refuse(send, busy)
            return
        held = True

        async def send_releasing(message):
            # Free the slot before the last body byte goes out: a client that sends its next request as soon
            # as this answer is complete must find the slot free.
            nonlocal held
            if held and message["type"] == "http.response.body" and not message.get("more_body", False):
                held = False
                self.gate.release()
            await send(message)

        try:
            if self.offload:
                await self._run_in_thread(scope, receive, send_releasing)
            else:
                await self.app(scope, receive, send_releasing)
        finally:
            if held:
                self.gate.release()

    async def _run_in_thread(self, scope, receive, send) -> None:
        server_loop = asyncio.get_running_loop()

        def on_server_loop(coroutine):
            # run receive()/send() on the server's loop, awaited from the worker's loop
            return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, server_loop))

        async def thread_receive():
            return await on_server_loop(receive())

        async def thread_send(message):
            await on_server_loop(send(message))

        await asyncio.to_thread(asyncio.run, self.app(scope, thread_receive, thread_send))


async def _refuse(send, busy: ServerBusy) -> None:
    body = json.dumps({"detail": busy.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in busy.headers.items()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
