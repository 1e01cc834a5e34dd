"""The status the access log and `audioserve_requests_total` record for a request: what the
app sent, or, when it sent nothing, what the edge answers in its place (503 for a request
cut at shutdown, 500 for an error that escaped every handler: the middleware sends it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.edge.middleware import RequestContextMiddleware
from service.runtime.metrics import Metrics

App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _start(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})


async def sends_500_then_is_cut(scope: Scope, receive: Receive, send: Send) -> None:
    await _start(send, 500)
    raise asyncio.CancelledError


async def cut_before_answering(scope: Scope, receive: Receive, send: Send) -> None:
    raise asyncio.CancelledError


async def fails_before_answering(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a defect")


async def sends_200_then_fails(scope: Scope, receive: Receive, send: Send) -> None:
    await _start(send, 200)
    raise RuntimeError("a defect mid-answer")


async def answers_200(scope: Scope, receive: Receive, send: Send) -> None:
    await _start(send, 200)
    await send({"type": "http.response.body", "body": b"ok"})


def _recorded(app: App, raises: type[BaseException] | None) -> dict[str, float]:
    metrics = Metrics()
    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x",
                    "query_string": b"", "headers": [], "client": ("127.0.0.1", 1)}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def run() -> None:
        await RequestContextMiddleware(app, metrics)(scope, receive, send)

    with pytest.raises(raises) if raises is not None else contextlib.nullcontext():
        asyncio.run(run())
    return {s.labels["status"]: s.value for m in metrics.requests.collect()
            for s in m.samples if s.name.endswith("_total")}


@pytest.mark.parametrize(("app", "raises", "status"), [
    (answers_200, None, "200"),
    (sends_500_then_is_cut, asyncio.CancelledError, "500"),  # what it sent, cut after
    (cut_before_answering, asyncio.CancelledError, "503"),
    (fails_before_answering, None, "500"),  # answered here: a 500, nothing raised on
    (sends_200_then_fails, RuntimeError, "200"),  # mid-answer: the connection must break
])
def test_the_recorded_status_is_what_the_client_got(
        app: App, raises: type[BaseException] | None, status: str) -> None:
    assert _recorded(app, raises) == {status: 1.0}
