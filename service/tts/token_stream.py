"""The caller's side of one streamed audio sequence: tokens as the engine samples them.

Flow control. A stream's reader can fall behind (its HTTP client reads slowly, or not at
all, or the piece waits for earlier pieces to be sent). Tokens delivered but not yet read
are counted: at `max_buffered` the stream asks the engine to pause the sequence (it
leaves the decoding batch, its KV cache parked, its slot free for others), and once the
reader is down to half of that it asks to resume. So what one sequence holds unread is
bounded (plus the tokens of steps the engine ran before the request reached it: one or
two while the event loop keeps up, more on a starved host), and a reader that never
reads costs no compute. Giving up on a reader that stalls is the HTTP layer's decision
(`AUDIOSERVE_TTS_STREAM_STALL_TIMEOUT_S`); `aclose()` then aborts the sequence.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from service.tts.jobs import CodeStep, GenerationResult


class SequenceControl(Protocol):
    """What a stream may ask of the engine that runs its sequence (thread-safe calls)."""

    def pause(self, request_id: str) -> None: ...

    def resume(self, request_id: str) -> None: ...

    def abort(self, request_id: str) -> None: ...

    def release(self) -> None:
        """The caller is done with one sequence (frees its place in the engine's queue)."""


class TokenStream:
    """Async iterator of `CodeStep`s, then the `GenerationResult` (or the engine's error).

    `started()` waits for the first token, so a stream can be refused (deadline,
    failure) before any response is sent; `aclose()` aborts a sequence still running."""

    def __init__(self, request_id: str, control: SequenceControl,
                 future: asyncio.Future[GenerationResult], max_buffered: int | None) -> None:
        self.request_id = request_id
        self._control = control
        self._future = future
        self._queue: deque[CodeStep] = deque()
        self._wakeup = asyncio.Event()
        self._high = max_buffered
        self._low = (max_buffered or 0) // 2
        self._paused = False
        self._result_read = False
        self._closed = False
        self.pauses = 0
        """Pauses asked so far (the engine may refuse one when too many are paused)."""
        future.add_done_callback(lambda _: self._wakeup.set())

    def deliver(self, step: CodeStep) -> None:
        """The engine's token callback (on the stream's event loop)."""
        self._queue.append(step)
        self._wakeup.set()
        if self._high is not None and not self._paused and len(self._queue) >= self._high:
            self._paused = True
            self.pauses += 1
            self._control.pause(self.request_id)

    @property
    def buffered(self) -> int:
        return len(self._queue)

    async def started(self) -> None:
        """Return once a token is there or the sequence ended; raise if it failed
        before its first token (e.g. `DeadlineExceeded`: it never got a slot)."""
        while not self._queue and not self._future.done():
            self._wakeup.clear()
            await self._wakeup.wait()
        if not self._queue and not self._future.cancelled() and self._future.exception():
            raise self._future.exception()  # type: ignore[misc]

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> CodeStep | GenerationResult:
        while True:
            if self._queue:
                step = self._queue.popleft()
                if self._paused and len(self._queue) <= self._low:
                    self._paused = False
                    self._control.resume(self.request_id)
                return step
            if self._future.done():
                if self._result_read:
                    raise StopAsyncIteration
                self._result_read = True
                return self._future.result()
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Stop reading: abort the sequence if it is still going, free its place. Never
        suspends, so it also completes inside a cancelled task's cleanup."""
        if self._closed:
            return
        self._closed = True
        if not self._future.done():
            self._control.abort(self.request_id)
        self._control.release()

    async def aclose(self) -> None:
        self.close()
