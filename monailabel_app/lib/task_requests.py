"""Train and scoring requests checked in the server, and task status answers without server paths.

MONAI Label runs a train or scoring task in a subprocess: ``POST /train/<model>`` answers 200 with a task id
before the task has read its parameters, and a bad one only shows as status ``ERROR`` later. The
:class:`TaskRequestMiddleware` runs the task's ``check_request(body)`` first: a bad value or a misspelt parameter
is answered with HTTP 422 naming it, and nothing starts; otherwise the answer gets ``ignored_parameters`` (the
keys nobody reads). The same middleware cleans every ``/train`` and ``/scoring`` answer with a
:class:`PathRedactor`: a task's status carries the last lines of its log, which name server folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from .params import InvalidParameter

__all__ = ["PathRedactor", "TaskRequestMiddleware"]

logger = logging.getLogger(__name__)

Checker = Callable[[str, str, dict], "list[str] | None"]
"""``(kind, name, body) -> ignored keys``, None when no MedSegDiff task has that name; raises InvalidParameter."""

_TASK_ROUTE = re.compile(r"^/(train|scoring)/([^/]+)/?$")


class PathRedactor:
    """Replaces server folders in the strings of a JSON value with placeholders (``<datastore>/x.nii.gz``).

    Args:
        roots: placeholder → folder. Each folder is also matched with symbolic links resolved; the longest
            folder is replaced first, and only as a whole path component.
    """

    def __init__(self, roots: Mapping[str, str]) -> None:
        pairs = {}
        for placeholder, folder in roots.items():
            for variant in (os.path.abspath(folder), os.path.realpath(folder)):
                if len(variant) > 1:
                    pairs.setdefault(variant.rstrip("/"), placeholder)
        self._pairs = sorted(pairs.items(), key=lambda item: -len(item[0]))
        self._pattern = re.compile("|".join(re.escape(folder) + r"(?![\w.-])" for folder, _ in self._pairs))

    @classmethod
    def for_server(cls, app_dir: str, studies: str, model_dir: str) -> "PathRedactor":
        """The folders of a running app: datastore, trained models, app, its checkout, Python, temp, home."""
        roots = {"<models>": model_dir, "<app>": app_dir, "<checkout>": os.path.dirname(os.path.abspath(app_dir))}
        if not studies.startswith(("http://", "https://")):
            roots["<datastore>"] = studies
        roots.update({"<python>": sys.prefix, "<tmp>": tempfile.gettempdir(), "<home>": os.path.expanduser("~")})
        return cls(roots)

    def text(self, value: str) -> str:
        if not self._pairs:
            return value
        lookup = dict(self._pairs)
        return self._pattern.sub(lambda m: lookup[m.group(0)], value)

    def __call__(self, value: Any) -> Any:
        """``value`` with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self(v) for k, v in value.items()}
        return value


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _answer(send, status: int, payload: Any, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    kept = [(k, v) for k, v in (headers or []) if k.lower() not in (b"content-length", b"content-type")]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})


class TaskRequestMiddleware:
    """ASGI middleware for ``/train`` and ``/scoring`` (see the module docstring).

    Args:
        app: the ASGI app to wrap.
        check: looks up the task and checks a request body (:data:`Checker`).
        redact: cleans the JSON answers of these routes.
    """

    def __init__(self, app, check: Checker, redact: PathRedactor) -> None:
        self.app = app
        self.check = check
        self.redact = redact

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/train", "/scoring")):
            await self.app(scope, receive, send)
            return
        ignored = None
        route = _TASK_ROUTE.match(path)
        if scope.get("method", "").upper() == "POST" and route:
            body = await _read_body(receive)
            receive = _replay(body, receive)
            try:
                request = json.loads(body) if body.strip() else {}
            except ValueError:
                request = None  # FastAPI answers a body that is not JSON
            if isinstance(request, dict):
                try:
                    ignored = self.check(route.group(1), route.group(2), request)
                except InvalidParameter as e:
                    logger.info("%s %s refused: %s", route.group(1), route.group(2), e)
                    await _answer(send, 422, {"detail": str(e)})
                    return
        await self._send_cleaned(scope, receive, send, ignored)

    async def _send_cleaned(self, scope, receive, send, ignored: list[str] | None) -> None:
        """Run the app, buffer its answer; redact a JSON answer (and add ``ignored_parameters`` to a 200 dict)."""
        start: dict = {}
        chunks: list[bytes] = []

        async def buffered(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._flush(send, start, b"".join(chunks), ignored)
            else:
                await send(message)

        await self.app(scope, receive, buffered)

    async def _flush(self, send, start: dict, body: bytes, ignored: list[str] | None) -> None:
        headers = list(start.get("headers", []))
        is_json = any(k.lower() == b"content-type" and b"json" in v.lower() for k, v in headers)
        try:
            payload = json.loads(body) if is_json else None
        except ValueError:
            payload = None
        if payload is None:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        if ignored is not None and start["status"] == 200 and isinstance(payload, dict):
            payload["ignored_parameters"] = ignored
        await _answer(send, start["status"], self.redact(payload), headers)
