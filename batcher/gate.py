"""The core gate: which model's batch computes next when several models share CPU cores.

Design note. On a CPU host every model's batch workers run their graphs on the same cores:
CLAP's two workers and emotion2vec's two, each single-threaded, are four threads on two
cores, and the kernel shares the cores among them. Under load that is processor sharing:
an utterance that arrives while two CLAP windows compute runs at two thirds of its speed
for as long as they do, and every result is late by the share it gave away. The gate turns
that into a queue: at most `slots` gated batches compute at once (a slot is the cores one
batch's graph threads use: one core, with the CPU default of single-threaded workers),
and a free slot goes to the waiting batch whose work has been due the longest, whichever
model it is for. A result's wait is then the work ahead of it, done at full speed, not a
slice of everything that is running (bench/results/live-gate-2026-12-07.md).

"Due since" is when the work's input was complete. By default it is when the item was
submitted; a caller that knows better says so with `due_since(t)` around its submit (a live
stream's utterance was complete when its last sample arrived, before the end-pointer's
silence confirmed it). Within one batcher items still form batches in its own order; the
gate only orders batches of different batchers (and two workers of one).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Iterator
from contextvars import ContextVar

_due_since: ContextVar[float | None] = ContextVar("batcher_due_since", default=None)


@contextlib.contextmanager
def due_since(moment: float) -> Iterator[None]:
    """Items submitted inside the block have been due since `moment` (`time.monotonic()`)."""
    token = _due_since.set(moment)
    try:
        yield
    finally:
        _due_since.reset(token)


def current_due_since() -> float:
    """What `submit` records for an item: the caller's `due_since`, or now."""
    moment = _due_since.get()
    return time.monotonic() if moment is None else moment


class CoreGate:
    """At most `slots` batches compute at once; a free slot goes to the oldest due work."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a core gate needs at least one slot, not {slots}")
        self.slots = slots
        self.busy = 0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, granted in self._waiting if not granted.done())

    async def acquire(self, due: float) -> None:
        """Wait for a slot; among waiters the smallest `due` is served first (ties: in
        order of arrival). Cancelled while waiting: no slot is held."""
        if self.busy < self.slots and not self.waiting:
            self.busy += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (due, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self.busy -= 1
        while self.busy < self.slots and self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # a cancelled waiter is skipped
                granted.set_result(None)
                self.busy += 1
