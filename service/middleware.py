"""Pure-ASGI middleware: request ids, access log and HTTP metrics, and the body-size limit.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the
body limit is enforced while the body is still arriving, before anything is buffered.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.metrics import Metrics

log = logging.getLogger("audioserve.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Assigns a request id (or keeps a sane client-sent X-Request-ID), echoes it in the
    response, logs one line per request and records latency per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = _header(scope, b"x-request-id")
        request_id = sent_id if sent_id and _SAFE_ID.match(sent_id) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(elapsed)
            log.info(
                '%s "%s %s" %d %.1fms id=%s',
                _client(scope), scope["method"], scope["path"], status, elapsed * 1e3, request_id,
            )


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length at once, else while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id")
        message = (
            f"request body over the limit of {self.max_bytes} bytes "
            "(AUDIOSERVE_MAX_UPLOAD_BYTES sets the audio part; base64 JSON adds a third)"
        )
        body = json.dumps(error_body("payload_too_large", message, request_id=request_id))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _client(scope: Scope) -> str:
    client: Any = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
