"""The dynamic batcher: merges concurrent `submit` calls into one call of a batch function.

Design note (batch forming)
---------------------------
Items wait in one bounded FIFO. The loop forms a batch as soon as either `max_batch_size`
items are queued or the oldest item has waited `max_wait_ms`. The oldest live item is
always in the next batch (no starvation); the rest of the batch is filled with the queued
items whose `length` is closest to it, so one batch holds similar lengths and the batch
function pads little. Items whose caller went away (cancelled future) are dropped, and
items whose deadline passed while queued fail with `DeadlineExceeded` without being run.

The batch function is synchronous and runs in this batcher's own worker thread, so the
event loop never blocks; while a batch runs, the next one accumulates. Its outputs are
handed back in input order. An exception fails exactly the futures of that batch and the
loop goes on. `close()` stops admission and, by default, drains what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from batcher.errors import BatcherClosed, DeadlineExceeded, Overloaded

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("audioserve.batcher")


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float | None = 30.0
    """Default per-item deadline, counted from `submit` (None: no deadline)."""
    bucket_by_length: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError(f"invalid batch config: {self}")


@dataclass(frozen=True)
class BatchStats:
    """What one executed batch looked like, for metrics."""

    size: int
    queue_waits_s: tuple[float, ...]
    compute_s: float
    padding_fraction: float
    """Share of the padded batch (size x longest length) that is padding."""
    failed: bool


class BatchObserver(Protocol):
    """Receives the batcher's measurements; the service implements it with Prometheus."""

    def on_queue_depth(self, depth: int) -> None: ...

    def on_batch(self, stats: BatchStats) -> None: ...

    def on_reject(self, reason: str) -> None: ...


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    length: int
    future: asyncio.Future[R]
    enqueued_at: float
    deadline: float | None
    started: bool = field(default=False)


class DynamicBatcher(Generic[T, R]):
    """Batches `submit(item)` calls into `batch_fn(items) -> results` calls."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        config: BatchConfig | None = None,
        *,
        name: str = "batcher",
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config or BatchConfig()
        self._batch_fn = batch_fn
        self._observer = observer
        self._queue: list[_Pending[T, R]] = []
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-worker")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._mean_batch_s = 0.05
        self.batches_run = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    @property
    def running(self) -> bool:
        """False once the loop has ended (closed, or died: the service then reports not ready)."""
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def close(self, drain: bool = True) -> None:
        """Stop admitting items; run what is queued (drain) or fail it with BatcherClosed."""
        self._closing = True
        if not drain:
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosed(f"{self.name} closed"))
            self._queue.clear()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # -- submission ------------------------------------------------------------------

    async def submit(self, item: T, *, length: int = 0, timeout_s: float | None = -1.0) -> R:
        """Queue one item and wait for its result.

        `timeout_s` overrides the config's deadline (None disables it). Raises `Overloaded`
        when the queue is full, `DeadlineExceeded` when the deadline passes before the item
        is run, `BatcherClosed` during shutdown, or whatever the batch function raised.
        """
        if self._closing or not self.running:
            raise BatcherClosed(f"{self.name} is not accepting work")
        if len(self._queue) >= self.config.max_queue:
            self._report_reject("queue_full")
            raise Overloaded(
                f"{self.name} queue is full ({self.config.max_queue} waiting)",
                retry_after_s=self.retry_after_s(),
            )
        timeout = self.config.timeout_s if timeout_s == -1.0 else timeout_s
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(
            item=item,
            length=length,
            future=loop.create_future(),
            enqueued_at=now,
            deadline=None if timeout is None else now + timeout,
        )
        self._queue.append(pending)
        self._report_depth()
        self._wakeup.set()
        try:
            if timeout is None:
                return await pending.future
            try:
                return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                if pending.started:  # already computing: the result is near, take it
                    return await pending.future
                pending.future.cancel()
                self._report_reject("deadline")
                raise DeadlineExceeded(
                    f"{self.name}: not started within the {timeout:g} s deadline"
                ) from None
        except asyncio.CancelledError:
            pending.future.cancel()  # the caller went away: the loop will skip the item
            raise

    def retry_after_s(self) -> float:
        """A rough wait until the queue has room: the queued batches times a batch's time."""
        batches = len(self._queue) / self.config.max_batch_size
        return max(1.0, batches * self._mean_batch_s)

    # -- the loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            await self._run(batch)

    async def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait until a batch is due, then cut it. None: closing and nothing is left."""
        cfg = self.config
        while True:
            self._drop_dead()
            if not self._queue:
                if self._closing:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest_wait = time.monotonic() - self._queue[0].enqueued_at
            remaining = cfg.max_wait_ms / 1000.0 - oldest_wait
            if len(self._queue) >= cfg.max_batch_size or remaining <= 0 or self._closing:
                return self._cut()
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _drop_dead(self) -> None:
        """Remove items nobody waits for, and fail those whose deadline has passed."""
        now = time.monotonic()
        live = []
        for pending in self._queue:
            if pending.future.done():
                continue
            if pending.deadline is not None and now >= pending.deadline:
                pending.future.set_exception(
                    DeadlineExceeded(f"{self.name}: deadline passed while queued")
                )
                self._report_reject("deadline")
                continue
            live.append(pending)
        if len(live) != len(self._queue):
            self._queue = live
            self._report_depth()

    def _cut(self) -> list[_Pending[T, R]]:
        """The oldest item plus the queued items closest to it in length."""
        size = self.config.max_batch_size
        if not self.config.bucket_by_length or len(self._queue) <= size:
            batch, self._queue = self._queue[:size], self._queue[size:]
        else:
            anchor = self._queue[0].length
            rest = sorted(
                range(1, len(self._queue)),
                key=lambda i: (abs(self._queue[i].length - anchor), i),
            )
            chosen = {0, *rest[: size - 1]}
            batch = [p for i, p in enumerate(self._queue) if i in chosen]
            self._queue = [p for i, p in enumerate(self._queue) if i not in chosen]
        self._report_depth()
        return batch

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        started_at = time.monotonic()
        for pending in batch:
            pending.started = True
        items = [p.item for p in batch]
        failed = False
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._batch_fn, items
            )
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name}: batch function returned {len(results)} results "
                    f"for {len(batch)} items"
                )
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        except Exception as exc:  # one failed batch fails its own items only
            failed = True
            log.exception("%s: batch of %d failed", self.name, len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        compute_s = time.monotonic() - started_at
        self._mean_batch_s = 0.8 * self._mean_batch_s + 0.2 * compute_s
        self.batches_run += 1
        if self._observer is not None:
            lengths = [p.length for p in batch]
            padded = max(lengths) * len(lengths)
            self._observer.on_batch(
                BatchStats(
                    size=len(batch),
                    queue_waits_s=tuple(started_at - p.enqueued_at for p in batch),
                    compute_s=compute_s,
                    padding_fraction=(1.0 - sum(lengths) / padded) if padded else 0.0,
                    failed=failed,
                )
            )

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.on_queue_depth(len(self._queue))

    def _report_reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.on_reject(reason)
