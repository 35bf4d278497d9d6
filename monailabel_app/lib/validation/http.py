"""HTTP pieces: a request-body size limit as ASGI middleware, installable into an already started app."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .ids import upload_limit_bytes

__all__ = ["UploadSizeLimitMiddleware", "install_asgi_middleware"]


class UploadSizeLimitMiddleware:
    """ASGI middleware: answers 413 to request bodies larger than ``max_bytes``.

    A ``Content-Length`` above the limit is refused before any body byte is read; a body without one
    (chunked) is counted while the app reads it and cut off at the limit. Other requests pass untouched.

    Args:
        app: the ASGI app to wrap.
        max_bytes: the limit; default :func:`upload_limit_bytes` (read once, at construction).
        methods: HTTP methods whose bodies are limited.
    """

    def __init__(self, app, max_bytes: int | None = None, methods: Iterable[str] = ("POST", "PUT", "PATCH")) -> None:
        self.app = app
        self.max_bytes = upload_limit_bytes() if max_bytes is None else int(max_bytes)
        self.methods = {m.upper() for m in methods}

    def _detail(self, size: int | None) -> str:
        got = "" if size is None else f"{size / 2**20:.1f} MiB, "
        return f"request body is too large ({got}limit {self.max_bytes / 2**20:.1f} MiB, MEDSEGDIFF_MAX_UPLOAD_MB)"

    async def _refuse(self, send, size: int | None) -> None:
        body = json.dumps({"detail": self._detail(size)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method", "").upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return

        from starlette.exceptions import HTTPException

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException: FastAPI's body parsing re-raises it and answers 413
                    raise HTTPException(status_code=413, detail=self._detail(None))
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except HTTPException as e:
            if e.status_code != 413 or started:
                raise
            await self._refuse(send, None)


def install_asgi_middleware(asgi_app, middleware_class, **kwargs) -> bool:
    """Wrap an already started Starlette/FastAPI app's middleware stack in ``middleware_class``.

    MONAI Label builds ``monailabel.app:app`` and starts it before it loads the app's ``main.py``, so
    ``app.add_middleware`` raises "Cannot add middleware after an application has started". Replacing the
    built stack works for every later request. Idempotent: returns False when already installed.
    """
    stack = asgi_app.middleware_stack
    if stack is None:
        asgi_app.add_middleware(middleware_class, **kwargs)
        return True
    layer = stack
    while layer is not None:
        if isinstance(layer, middleware_class):
            return False
        layer = getattr(layer, "app", None)
    asgi_app.middleware_stack = middleware_class(stack, **kwargs)
    return True
