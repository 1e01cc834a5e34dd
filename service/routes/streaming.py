"""Sending TTS audio to clients that may go away, or stop reading, at any moment.

Three cases, each freeing the request's engine sequences promptly:
- one-shot: Starlette does not cancel a handler whose client went away, so
  `cancel_on_disconnect` polls for the disconnect and cancels the synthesis (the engine
  sequence is aborted at its next step);
- a stream whose client disconnects: `stream_audio` polls too, even between chunks, and
  closes the speech stream (aborting its sequences);
- a stream whose client stays connected but stops reading: once the socket's buffers are
  full, every `send` waits. `AudioStreamResponse` sends at most `SEND_BYTES` at a time
  and gives each send `stall_timeout_s` (AUDIOSERVE_TTS_STREAM_STALL_TIMEOUT_S): past it
  the client is given up, the generation aborted and the response left incomplete (the
  chunked body never ends, so the client sees a truncated transfer, not a silently short
  file; uvicorn closes the transport, which asyncio does once its buffer is flushed).
  Meanwhile the buffers behind the response are bounded, so the generation has paused
  long before (service/pipelines/chattts_stream.py). A client that reads, even slowly (a
  player reading in real time), keeps every send short and is never cut off.

What is only known once the audio is out (each piece's span) goes in HTTP trailers, where
the server offers them (ASGI's `http.response.trailers`: this service's own server, on
HTTP/1.1): declared by `Trailer` in the head, sent after the last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from service.errors import ABORT_EXTENSION, TRAILERS_EXTENSION
from service.pipelines.chattts_stream import SpeechStream

log = logging.getLogger("audioserve.tts")

T = TypeVar("T")
DISCONNECT_POLL_S = 0.1
SEND_BYTES = 64 * 1024
"""Largest single send: one send then waits at most for the client to take this much."""


class Disconnectable(Protocol):
    async def is_disconnected(self) -> bool: ...


class ClientGone(Exception):
    """The client disconnected; its work was cancelled."""


async def cancel_on_disconnect(request: Disconnectable, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it as soon as the client disconnects (polled)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not task.done():
            if await request.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


async def stream_audio(request: Disconnectable, stream: SpeechStream
                       ) -> AsyncGenerator[bytes, None]:
    """The stream's bytes; stops (and aborts generation) as soon as the client is gone,
    even between chunks, when nothing is being sent that could fail."""
    chunks = aiter(stream)
    gone = asyncio.Event()

    async def watch() -> None:
        while not gone.is_set():
            if await request.is_disconnected():
                gone.set()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    watcher = asyncio.create_task(watch())
    step: asyncio.Future[bytes] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(chunks))
            waiter = asyncio.create_task(gone.wait())
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not step.done():
                log.info("client gone: stream cancelled")
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stream.abort()  # first, and without awaiting: it must happen even when cancelled
        gone.set()
        watcher.cancel()
        if step is not None and not step.done():  # disconnected, or we were cancelled
            step.cancel()
            with contextlib.suppress(BaseException):
                await step
        await chunks.aclose()  # type: ignore[attr-defined]


class AudioStreamResponse(StreamingResponse):
    """A chunked response that gives up on a client that stops reading (module note)."""

    def __init__(self, content: AsyncGenerator[bytes, None] | AsyncIterator[bytes], *,
                 stall_timeout_s: float, media_type: str | None = None,
                 headers: dict[str, str] | None = None,
                 on_stall: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None,
                 trailers: dict[str, Callable[[], str]] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.stall_timeout_s = stall_timeout_s
        self.trailers = trailers or {}
        """Trailer fields by name, each value made once the body is out."""
        self._trailing = False
        self.on_stall = on_stall
        self.on_close = on_close
        """Called (synchronously) however the response ends, even cancelled before its
        first chunk, when the content iterator never ran and so never cleaned up."""
        self.stalled = False
        self._abort: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        self._abort = extensions.get(ABORT_EXTENSION)
        self._trailing = bool(self.trailers) and TRAILERS_EXTENSION in extensions
        if self._trailing:
            self.raw_headers.append((b"trailer", ", ".join(self.trailers).encode("latin-1")))
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers, "trailers": self._trailing})
            async for chunk in self.body_iterator:
                data = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode()
                for start in range(0, len(data), SEND_BYTES):
                    if not await self._send(send, data[start:start + SEND_BYTES], True):
                        return  # incomplete on purpose: the server closes the connection
            if await self._send(send, b"", False) and self._trailing:
                fields = [(name.encode("latin-1"), make().encode("latin-1"))
                          for name, make in self.trailers.items()]
                await self._send_message(send, {"type": "http.response.trailers",
                                                "headers": fields, "more_trailers": False})
        finally:
            if self.on_close is not None:
                self.on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()

    async def _send(self, send: Send, body: bytes | memoryview, more: bool) -> bool:
        return await self._send_message(send, {"type": "http.response.body",
                                               "body": bytes(body), "more_body": more})

    async def _send_message(self, send: Send, message: Message) -> bool:
        try:
            async with asyncio.timeout(self.stall_timeout_s):
                await send(message)
            return True
        except TimeoutError:
            self.stalled = True
            if self.on_stall is not None:
                self.on_stall()
            log.warning("streaming client took no audio for %g s "
                        "(AUDIOSERVE_TTS_STREAM_STALL_TIMEOUT_S): generation aborted, "
                        "connection dropped", self.stall_timeout_s)
            if self._abort is not None:  # else (not our server) the server's close
                self._abort()
                await asyncio.sleep(0)  # the server sees the connection lost, not an error
            return False
