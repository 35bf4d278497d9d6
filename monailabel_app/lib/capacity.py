"""Refusing inference beyond capacity with HTTP 503, instead of queueing until clients time out.

MONAI Label 0.8.5's ``POST /infer/{model}`` is an ``async`` endpoint that calls the (synchronous) inference
directly, so one inference blocks the server's event loop: every other request, ``/info/`` included, waits
until it ends, and a semaphore inside the infer task never sees a second request (measured: two 4 s
requests take 4 s and 7.5 s, ``/info/`` sent in between 7 s, with ``MONAI_LABEL_INFER_CONCURRENCY=2``).

* :class:`InferenceGate`: a non-blocking counter of running inferences; ``slot()`` raises
  :class:`ServerBusy` (an HTTP 503 ``HTTPException`` with ``Retry-After``) when all slots are taken. Usable
  anywhere several threads may run inference (infer task, scoring, batch inference).
* :class:`InferenceGateMiddleware`: the HTTP side. It takes a slot for each ``/infer/`` request (503 when
  none is free) and runs the request in a worker thread with its own event loop, so the server keeps
  answering other requests (and refusing extra ones) while a model runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from starlette.exceptions import HTTPException

__all__ = ["ServerBusy", "InferenceGate", "InferenceGateMiddleware"]


class ServerBusy(HTTPException):
    """Every inference slot is taken: HTTP 503 with a ``Retry-After`` header."""

    def __init__(self, detail: str, retry_after_s: int = 10) -> None:
        super().__init__(status_code=503, detail=detail, headers={"Retry-After": str(retry_after_s)})


class InferenceGate:
    """At most ``max_concurrent`` inferences at a time; one more is refused at once, never queued.

    Args:
        max_concurrent: number of slots (1 on a single GPU or a small CPU).
        retry_after_s: the ``Retry-After`` a refused client is sent.

    Example:
        >>> gate = InferenceGate(1)
        >>> with gate.slot():
        ...     pass  # run the model
    """

    def __init__(self, max_concurrent: int = 1, retry_after_s: int = 10) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be an integer >= 1, got {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Inferences running now."""
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a slot if one is free (never blocks)."""
        with self._lock:
            if self._in_flight >= self.max_concurrent:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("InferenceGate.release() without a matching try_acquire()")
            self._in_flight -= 1

    def busy_message(self, what: str = "inference") -> str:
        return (
            f"server busy: {self._in_flight} of {self.max_concurrent} {what} slot(s) in use; "
            f"retry in about {self.retry_after_s} s"
        )

    @contextmanager
    def slot(self, what: str = "inference") -> Iterator[None]:
        """Hold a slot for the ``with`` block; raises :class:`ServerBusy` (503) when none is free."""
        if not self.try_acquire():
            raise ServerBusy(self.busy_message(what), self.retry_after_s)
        try:
            yield
        finally:
            self.release()


class InferenceGateMiddleware:
    """ASGI middleware: 503 for ``/infer/`` requests beyond ``gate``'s slots; the others run off the event loop.

    Args:
        app: the ASGI app to wrap.
        gate: the shared :class:`InferenceGate`.
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
        self.gate = gate if gate is not None else InferenceGate(1)
        self.path_prefixes = tuple(path_prefixes)
        self.offload = offload

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.path_prefixes):
            await self.app(scope, receive, send)
            return
        if not self.gate.try_acquire():
            body = json.dumps({"detail": self.gate.busy_message()}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.gate.retry_after_s).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
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
