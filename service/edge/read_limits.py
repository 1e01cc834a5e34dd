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
admission slot (service.routes.deps.admit), so a slow client holds a connection, never a slot.

Once the body is complete, `receive` passes through untouched: streaming responses
listen on it for the client's disconnect for as long as they run.

One budget for the whole process (`BodyBudget`, AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT):
bytes of request bodies being read or held until their request is answered (a read body
stays in memory while it is parsed and run). A body's bytes are taken before any of it
is read, by its Content-Length (a chunked body takes its chunks as they come); no room
-> 503 + Retry-After (its bytes drained unkept, so the client sees the answer), a body
larger than the whole budget -> 413. They are given back when the response starts. 64
concurrent 35 MB uploads cost +3.9 GB of RSS before it; per-route limits alone bound one
request, not how many are read at once. Taken before reading, every body let in can
finish (taken as the bytes came, a crowd of bodies could fill it halfway each and all be
refused). But a declared length costs nothing to send: eight connections declaring 35 MB
each and dripping a byte every few seconds held the whole budget (every upload 503) for
as long as the read timeouts let them, again on reconnecting. So room held by a body
that is behind `body_min_rate` since it began is taken back when another body needs it:
the slow body gets its 408 at its next read, the other its room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import DRAIN_TIMEOUT_S, ReadLimitExceeded, error_body_for


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str
    """The setting that raises it, named in the 413's message."""


class BodyTooLarge(ReadLimitExceeded):
    status, code = 413, "payload_too_large"


class BodyTimeout(ReadLimitExceeded):
    status, code = 408, "body_timeout"


class BodyBudgetFull(ReadLimitExceeded):
    status, code = 503, "overloaded"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class BodyBudget:
    """Bytes of request bodies in flight, process-wide (see the module's note). Used on
    the event loop only: no lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0
        self._holders: set[_BodyReader] = set()

    def take(self, size: int, holder: _BodyReader | None = None) -> None:
        """Take `size` bytes, or raise: 413 when they can never fit, 503 when not now,
        even after taking back the room of bodies behind their minimum rate."""
        if size > self.capacity:
            raise BodyTooLarge(
                f"request body of {size} bytes is larger than all the bodies this server "
                f"reads at once ({self.capacity} bytes, AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT)")
        if self.taken + size > self.capacity:
            now = time.monotonic()
            for slow in [h for h in self._holders if h is not holder and h.behind(now)]:
                self.give(slow.revoke(), slow)
        if self.taken + size > self.capacity:
            raise BodyBudgetFull(
                f"{self.taken} bytes of request bodies are being read or handled now; "
                f"this one's {size} would pass the server's {self.capacity} "
                "(AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT): retry shortly")
        self.taken += size
        if holder is not None:
            self._holders.add(holder)

    def give(self, size: int, holder: _BodyReader | None = None) -> None:
        self.taken -= size
        if holder is not None:
            self._holders.discard(holder)


@dataclass(frozen=True)
class ReadTimeouts:
    idle_s: float
    total_s: float
    min_rate: int


class ReadLimitsMiddleware:
    """Size, pause and time limits on the request body (see the module's note)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], BodyLimit],
                 timeouts: ReadTimeouts, budget: BodyBudget | None = None) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeouts = timeouts
        self.budget = budget or BodyBudget(2**62)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reader = _BodyReader(receive, self.limit_for(scope["path"]), self.timeouts,
                             declared=_content_length(scope), budget=self.budget)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                reader.give_back()  # the body is done with once the answer starts
            await send(message)

        try:
            await self.app(scope, reader.receive, tracking_send)
        except ReadLimitExceeded as exc:
            if started:
                raise
            if isinstance(exc, BodyBudgetFull):
                await reader.drain()
            await _refuse(scope, send, exc)
        finally:
            reader.give_back()


class _BodyReader:
    def __init__(self, receive: Receive, limit: BodyLimit, timeouts: ReadTimeouts,
                 declared: int | None, budget: BodyBudget) -> None:
        self._receive = receive
        self.limit = limit
        self.timeouts = timeouts
        self.declared = declared
        self.budget = budget
        self.held = 0
        """Bytes of the budget this body holds."""
        self.received = 0
        self.complete = False
        self.started = time.monotonic()
        self.revoked = False
        """Its room was given to another body (it was behind its minimum rate)."""

    def give_back(self) -> None:
        self.budget.give(self.held, self)
        self.held = 0

    def behind(self, now: float) -> bool:
        """Still arriving, and slower than `min_rate` since it began."""
        return not self.complete and self.received < (now - self.started) * self.timeouts.min_rate

    def revoke(self) -> int:
        """Its room, taken back (its next read is a 408)."""
        held, self.held, self.revoked = self.held, 0, True
        return held

    async def drain(self) -> None:
        """Read the rest of the body unkept (bounded, as `errors.drain_body`), so the
        refusal is not lost to a reset."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while not self.complete:
                    message = await self._receive()
                    self.complete = (message["type"] != "http.request"
                                     or not message.get("more_body", False))

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()
        if self.declared is not None and self.declared > self.limit.max_bytes:
            raise _too_large(self.limit, self.declared)  # unread, once the body is wanted
        if self.declared and not self.held and not self.revoked:
            self.budget.take(self.declared, self)  # before a byte of it is read
            self.held = self.declared
        t = self.timeouts
        deadline = self.started + t.total_s + self.received / t.min_rate
        remaining = deadline - time.monotonic()
        idle = remaining > t.idle_s
        try:
            async with asyncio.timeout(min(t.idle_s, max(remaining, 0.0))):
                message = await self._receive()
        except TimeoutError:
            raise self._timeout(idle) from None
        if self.revoked:
            raise self._revoked()
        if message["type"] == "http.request":
            size = len(message.get("body", b""))
            self.received += size
            if self.received > self.limit.max_bytes:
                raise _too_large(self.limit)
            if self.received > self.held:  # chunked (or more than declared): as it comes
                self.budget.take(self.received - self.held, self)
                self.held = self.received
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # disconnected
        return message

    def _revoked(self) -> BodyTimeout:
        elapsed = time.monotonic() - self.started
        return BodyTimeout(
            f"the request body came slower than {self.timeouts.min_rate} bytes/s "
            f"({self.received} bytes in {elapsed:.0f} s) while other bodies waited for the "
            "room it held (AUDIOSERVE_BODY_MIN_RATE, AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT)")

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


def _too_large(limit: BodyLimit, declared: int | None = None) -> BodyTooLarge:
    size = f"is {declared} bytes, " if declared is not None else ""
    return BodyTooLarge(f"request body {size}over the limit of {limit.max_bytes} bytes "
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
    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})
