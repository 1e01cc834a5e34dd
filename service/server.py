"""The HTTP server: uvicorn, plus the connection-level limits that ASGI cannot see.

uvicorn has a keep-alive timeout but no limit on how long a request's line and headers
may take, and its `limit_concurrency` answers a plain-text 503 without Retry-After. Both
matter against slow clients: 2,000 connections that never finish their headers stayed
open for ever; and nothing caps the size of the headers (200 KB were taken). So
`GuardedProtocol` adds, at the protocol (before any ASGI code runs): a header deadline
(408 JSON, then close), a header size cap (431) and a cap on open connections (the
connection over the cap is answered 503 + Retry-After in this service's error shape).
Body-reading limits live in `service.read_limits`, where the ASGI receive is.

`uvicorn_config` is the one place the server is configured: `python -m service` and the
live-socket tests use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any, ClassVar, cast

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_body
from service.settings import Settings

ABORT_EXTENSION = "audioserve.abort"
"""`scope["extensions"][ABORT_EXTENSION]()` drops the connection at once (TCP reset, the
unsent buffer discarded). A response given up on a client that stopped reading calls it:
a plain close waits for that client to read the megabytes already queued, so its
connection would stay open, counted against the connection cap, for as long as it likes."""
REFUSAL_DRAIN_S = 2.0
"""How long a connection refused at the cap may go on sending before it is closed."""


def _raw_response(status: int, reason: str, code: str, message: str,
                  extra_headers: str = "") -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n")
    return head.encode("latin-1") + body


class ConnectionRefusal:
    """The ASGI app a connection over the cap gets: its body read (briefly, so the answer
    is not lost to a reset), then 503 + Retry-After naming the limit."""

    def __init__(self, max_connections: int) -> None:
        message = (f"the server has {max_connections} open connections, its limit "
                   "(AUDIOSERVE_MAX_CONNECTIONS); retry shortly")
        self.body = json.dumps(error_body("too_many_connections", message)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSAL_DRAIN_S):
                while (await receive()).get("more_body", False):
                    pass
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": self.body})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap; the
    limits are class attributes, set per server by `guarded_protocol`."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    max_header_bytes: ClassVar[int] = 65536
    refusal_app: ClassVar[ConnectionRefusal]
    timeout_answer: ClassVar[bytes]
    too_big_answer: ClassVar[bytes]
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _headers_too_big = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.app = self.refusal_app  # answered once its headers are in
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._headers_too_big and not self.transport.is_closing():
            self.transport.write(self.too_big_answer)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()  # a kept-alive connection's next request

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        if not self._headers_too_big:  # else answered 431 once the parser returns
            extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
            extensions[ABORT_EXTENSION] = self.transport.abort
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._headers_too_big:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._headers_too_big:
            super().on_message_complete()

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        self._headers_too_big = self._headers_too_big or self._header_bytes > self.max_header_bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                      self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(self.timeout_answer)
        self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class for one server, with the settings' limits."""
    timeout_answer = _raw_response(
        408, "Request Timeout", "header_timeout",
        f"the request line and headers did not arrive within {settings.header_timeout_s:g} s "
        "(AUDIOSERVE_HEADER_TIMEOUT_S)")
    too_big_answer = _raw_response(
        431, "Request Header Fields Too Large", "headers_too_large",
        f"the request line and headers exceed {settings.max_header_bytes} bytes "
        "(AUDIOSERVE_MAX_HEADER_BYTES)")
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "max_header_bytes": settings.max_header_bytes,
        "too_big_answer": too_big_answer,
        "refusal_app": ConnectionRefusal(settings.max_connections),
        "timeout_answer": timeout_answer,
    })


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The server's configuration from the settings (every limit named there)."""
    trusted = settings.forwarded_allow_ips.strip()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # RequestContextMiddleware logs each request with its id
        "http": guarded_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "lifespan": "on",
        "backlog": max(2048, settings.max_connections),
        # larger WebSocket messages are refused (1009) before they are read; up to it the
        # live route answers an oversized frame with an error event (service/live)
        "ws_max_size": 2 * max(settings.live_max_frame_bytes,
                               settings.tts_ws_max_message_bytes),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def bound_socket(host: str, port: int = 0) -> socket.socket:
    """A listening-ready socket (port 0: a free one), for servers started in tests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
