"""Limits on reading a request body: its size, its pauses and its total time.

Pure ASGI, wrapped around `receive`, so every limit holds while the body is still
arriving and before any of it is parsed. Over the size limit -> 413: by Content-Length
when the body is first asked for, before a byte of it is read (so the auth check, inside
this, answers an unauthenticated client first), else as soon as the bytes pass it. No
byte for `body_idle_timeout_s`, or the whole body not in by its deadline -> 408,
connection closed. The deadline is `body_timeout_s`
plus one second per `body_min_rate` bytes received (the rule of Apache's mod_reqtimeout):
a large upload on a slow link gets the time its size needs, a client dripping a byte a
second is cut off after `body_timeout_s`. Routes read the whole body before they take an
admission slot (service.deps.admit), so a slow client holds a connection, never a slot.

Once the body is complete, `receive` passes through untouched: streaming responses
listen on it for the client's disconnect for as long as they run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ReadLimitExceeded, error_body_for


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str
    """The setting that raises it, named in the 413's message."""


class BodyTooLarge(ReadLimitExceeded):
    status, code = 413, "payload_too_large"


class BodyTimeout(ReadLimitExceeded):
    status, code = 408, "body_timeout"


@dataclass(frozen=True)
class ReadTimeouts:
    idle_s: float
    total_s: float
    min_rate: int


class ReadLimitsMiddleware:
    """Size, pause and time limits on the request body (see the module's note)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], BodyLimit],
                 timeouts: ReadTimeouts) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeouts = timeouts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reader = _BodyReader(receive, self.limit_for(scope["path"]), self.timeouts,
                             declared=_content_length(scope))
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, reader.receive, tracking_send)
        except ReadLimitExceeded as exc:
            if started:
                raise
            await _refuse(scope, send, exc)


class _BodyReader:
    def __init__(self, receive: Receive, limit: BodyLimit, timeouts: ReadTimeouts,
                 declared: int | None) -> None:
        self._receive = receive
        self.limit = limit
        self.timeouts = timeouts
        self.declared = declared
        self.received = 0
        self.complete = False
        self.started = time.monotonic()

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()
        if self.declared is not None and self.declared > self.limit.max_bytes:
            raise _too_large(self.limit)  # refused unread, once something wants the body
        t = self.timeouts
        deadline = self.started + t.total_s + self.received / t.min_rate
        remaining = deadline - time.monotonic()
        idle = remaining > t.idle_s
        try:
            async with asyncio.timeout(min(t.idle_s, max(remaining, 0.0))):
                message = await self._receive()
        except TimeoutError:
            raise self._timeout(idle) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_bytes:
                raise _too_large(self.limit)
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # disconnected
        return message

    def _timeout(self, idle: bool) -> BodyTimeout:
        t = self.timeouts
        if idle:
            return BodyTimeout(
                f"the request body paused for more than {t.idle_s:g} s after "
                f"{self.received} bytes (AUDIOSERVE_BODY_IDLE_TIMEOUT_S)")
        allowed = t.total_s + self.received / t.min_rate
        return BodyTimeout(
            f"the request body did not arrive in time: {self.received} bytes in "
            f"{allowed:.0f} s ({t.total_s:g} s plus 1 s per {t.min_rate} bytes received: "
            "AUDIOSERVE_BODY_TIMEOUT_S, AUDIOSERVE_BODY_MIN_RATE)")


def _too_large(limit: BodyLimit) -> BodyTooLarge:
    return BodyTooLarge(f"request body over the limit of {limit.max_bytes} bytes "
                        f"({limit.setting})")


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(scope: Scope, send: Send, exc: ReadLimitExceeded) -> None:
    """Answer and close: the rest of the body is not read (that is the point)."""
    body = json.dumps(error_body_for(scope, exc.status, exc.code, exc.message)).encode()
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
