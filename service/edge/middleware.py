"""Pure-ASGI middleware: request ids, access log and HTTP metrics; the API key.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the
key is checked before the body is read (the body's own limits: service.edge.read_limits).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.edge.server import expects_continue
from service.errors import drain_body, error_body_for
from service.live.access import origin_refusal
from service.runtime.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("audioserve.access")

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestContextMiddleware:
    """Assigns a request id (or keeps a sane client-sent X-Request-ID), echoes it in the
    response, logs one line per request and records latency per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status: int | None = None
        """What the app answered; None while it has sent nothing."""
        cut = False

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
        except asyncio.CancelledError:  # the server stopped (edge.server.cut_at_shutdown)
            cut = True
            raise
        except Exception:
            if status is not None:  # mid-answer: only a broken connection can say so
                raise
            log.exception("unhandled error (request %s)", request_id)
            await _send_internal_error(scope, send_with_id)
        finally:
            # with nothing sent, what the edge answers: 503 for a request cut at shutdown
            # (cut_at_shutdown), 500 for an error that escaped every handler
            answered = status if status is not None else 503 if cut else 500
            elapsed = time.perf_counter() - started
            template = _template(scope, root_path)
            self.metrics.requests.labels(template, str(answered)).inc()
            self.metrics.request_seconds.labels(template).observe(elapsed)
            log.info(
                '%s "%s %s" %d %.1fms id=%s',
                _client(scope), _loggable(scope["method"]), _printable(scope), answered,
                elapsed * 1e3,
                request_id,
            )


    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket gets its id in the handshake's answer (accepted or refused) and one
        log line when it ends: the handshake's status, the close code, how long it lasted.
        Its traffic is counted by the live routes' own metrics, not as a request."""
        request_id = _request_id(scope)
        started = time.perf_counter()
        status: int | None = None
        close: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, close
            kind = message["type"]
            if kind in ("websocket.accept", "websocket.http.response.start"):
                status = 101 if kind == "websocket.accept" else message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            elif kind == "websocket.close":
                close = message.get("code", 1000)
                status = status or 403  # closed before accepting: the server answers 403
            await send(message)

        async def receive_close() -> Message:
            nonlocal close
            message = await receive()
            if message["type"] == "websocket.disconnect" and close is None:
                close = message.get("code", 1005)  # the client closed first
            return message

        try:
            await self.app(scope, receive_close, send_with_id)
        finally:
            log.info('%s "WS %s" %d %.1fms close=%s id=%s', _client(scope), _printable(scope),
                     status or 500, (time.perf_counter() - started) * 1e3,
                     "-" if close is None else close, request_id)


async def _send_error(scope: Scope, send: Send, status: int, code: str, message: str,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answered by a middleware, in the route's error shape (the app's handlers
    never see it)."""
    body = json.dumps(error_body_for(scope, status, code, message)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _send_internal_error(scope: Scope, send: Send) -> None:
    """A defect's answer, decided here once for every route: a 500 in the route's error
    shape, with the request id (the log line has it too), on a connection that stays
    usable. Starlette's own 500 (a handler for Exception) is sent from outside every
    middleware and the exception is raised again after it: the answer had no
    X-Request-ID, uvicorn logged a second traceback and dropped the kept-alive
    connection, so a pooled client's next request failed."""
    await _send_error(scope, send, 500, "internal_error", "internal error; see the server log")


def _template(scope: Scope, root_path: str) -> str:
    """The route's path template for the metrics' label: a mount (static files) as
    `/prefix/*`, a plain Starlette route (`/openapi.json`) as its path; `unmatched` for
    what no route took (a bounded label set either way)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    mounted = scope.get("root_path", "")
    if mounted != root_path:
        return f"{mounted[len(root_path):]}/*"
    return str(scope["path"]) if scope.get("endpoint") is not None else "unmatched"


def _request_id(scope: Scope) -> str:
    """A sane client-sent X-Request-ID, else a fresh one; kept in the scope's state."""
    sent_id = _header(scope, b"x-request-id")
    request_id = sent_id if sent_id and _SAFE_ID.fullmatch(sent_id) else uuid.uuid4().hex[:16]
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


class AuthMiddleware:
    """Bearer-token check (constant-time) before any of the body is read or parsed: an
    unauthenticated client gets its 401 without the service spending anything on what it
    sent (the rest of its body is drained, bounded, so the answer is not lost to a reset).
    `is_public(path)` says which paths need no key (health, metrics, the web page)."""

    def __init__(self, app: ASGIApp, key: str, is_public: Callable[[str], bool]) -> None:
        self.app = app
        self.expected = key.encode()
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_public(scope["path"]) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        headers = [(b"www-authenticate", b"Bearer")]
        if expects_continue(scope):  # no 100 Continue before the key: the body never comes
            headers.append((b"connection", b"close"))
        else:
            await drain_body(Request(scope, receive))
        await _send_error(scope, send, 401, "unauthorized",
                          "missing or wrong API key: send `Authorization: Bearer <key>`",
                          headers)

    def _authorised(self, scope: Scope) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1"), self.expected)


class OriginMiddleware:
    """A browser page of another origin may not send what changes or costs something
    (any method but GET, HEAD, OPTIONS): the WebSockets' origin rule, at the HTTP layer.
    Browsers send a multipart form or a plain-text POST across origins without asking
    first (a "simple request"), so without this any page a user of a keyless server
    visited could save or overwrite voices there, or spend its models. Clients that send
    no Origin (not browsers) are not affected; pages this server serves are its own."""

    SAFE: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = (None if scope["type"] != "http" or scope["method"] in self.SAFE
                   else origin_refusal(_header(scope, b"origin"), _header(scope, b"host"),
                                       self.settings, f"send {scope['method']} requests here"))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        headers = []
        if expects_continue(scope):
            headers.append((b"connection", b"close"))
        else:
            await drain_body(Request(scope, receive))
        await _send_error(scope, send, 403, "forbidden", refusal, headers)


class HeadAsGetMiddleware:
    """HEAD on a GET route answers as GET would, headers only (FastAPI's routes take the
    methods they list, so `HEAD /healthz` was a 405). The method is GET only while the
    app runs, so the access log and metrics keep HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


LOGGED_CHARS = 200
"""The most of a client's path or method one access line holds: a 63 KB path per request
had written the log as fast as the client sent it."""


def _printable(scope: Scope) -> str:
    """The path as the client sent it (still percent-encoded: `%0A` cannot start a forged
    log line), with anything unprintable escaped, cut at LOGGED_CHARS."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    return _loggable(raw.decode("ascii", "backslashreplace"))


def _loggable(text: str) -> str:
    """`text` escaped where unprintable and cut at LOGGED_CHARS, saying how much was cut."""
    cut = len(text) - LOGGED_CHARS
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:LOGGED_CHARS])
    return f"{text}...(+{cut})" if cut > 0 else text


def _client(scope: Scope) -> str:
    client: Any = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
