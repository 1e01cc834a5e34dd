"""Which model replica computed a response: `X-Audioserve-Replica`.

Each request gets a `RequestReplicas` record in a context variable (asyncio tasks and
`run_in_executor` with a copied context share it). The seam (`service.seam.handoff`) notes the
replica behind every batcher or engine call it makes: `clap#local` in one process, the Ray
replica (`clap#a1b2c3d4`) on a cluster. The middleware names them, in the order first
used, in the response's header; a response no model touched carries none. Work shared by
several requests (a label prompt embedded once for every concurrent asker) runs in a
context of its own (`shared_context`), and each asker copies its notes after it (`adopt`);
a cached prompt embedding keeps the replicas that computed it.

The record also runs clean-up at the end of the request (`on_end`): the cluster closes
here what a request opened but never used (a reserved TTS stream whose body never ran).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("audioserve.replicas")

HEADER = b"x-audioserve-replica"


@dataclass
class RequestReplicas:
    names: list[str] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def note(self, replica: str) -> None:
        if replica not in self.names:
            self.names.append(replica)

    def header(self) -> str:
        return ", ".join(self.names)

    def close(self) -> None:
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception:  # clean-up must not turn an answer into an error
                log.exception("request clean-up failed")


_current: contextvars.ContextVar[RequestReplicas | None] = contextvars.ContextVar(
    "audioserve_request_replicas", default=None
)


def note(*names: str) -> None:
    """Record that these replicas computed part of the current request's answer."""
    record = _current.get()
    if record is not None:
        for name in names:
            record.note(name)


def noted() -> tuple[str, ...]:
    """The replicas noted so far in the current context."""
    record = _current.get()
    return tuple(record.names) if record is not None else ()


def on_end(cleanup: Callable[[], None]) -> bool:
    """Run `cleanup` when the current request ends; False outside a request."""
    record = _current.get()
    if record is None:
        return False
    record._cleanups.append(cleanup)
    return True


def shared_context() -> tuple[contextvars.Context, RequestReplicas]:
    """A fresh context for work shared by many requests, with a record of its own."""
    record = RequestReplicas()
    context = contextvars.Context()
    context.run(_current.set, record)
    return context, record


def adopt(shared: RequestReplicas) -> None:
    """Copy the replicas of shared work into the current request's record."""
    note(*shared.names)


class ReplicaHeaderMiddleware:
    """Pure ASGI: one `RequestReplicas` per HTTP request, named in the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestReplicas()
        token = _current.set(record)

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start" and record.names:
                headers = [*message.get("headers", []), (HEADER, record.header().encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_replica)
        finally:
            _current.reset(token)
            record.close()
