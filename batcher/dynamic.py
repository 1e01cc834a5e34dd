"""The dynamic batcher: merges concurrent `submit` calls into one call of a batch function.

Design note (batch forming)
---------------------------
Items wait in one bounded FIFO. The loop forms a batch as soon as either the size limit
(`max_batch_size`, or the adaptive cap) is queued or the oldest item has waited
`max_wait_ms`; with `dispatch_when_idle` it also takes what is queued at once whenever a
worker is free, so a lone request at low load pays no `max_wait_ms` and batches grow from
what arrives while the previous batch computes. With `announced_arrivals`, callers announce
the items they are still preparing (`expecting()`), and the wait lasts only while one is
announced: with none on its way no batch-mate can come in time, so waiting would be pure
latency (a closed-loop client at concurrency 1 paid `max_wait_ms` on every request). The
oldest live item is always in the next batch (no starvation); the rest of the batch is
filled with the queued items whose `length` is closest to it, so one batch
holds similar lengths and the batch function pads little. With `max_padded_units`, an item
joins only while the batch's padded size (items x the longest length, what the batch
function allocates for) stays within it, so long items run few at a time; the oldest item
runs even alone over it (it cannot be split here).

Each item with a deadline holds one event-loop timer: if it fires before the item's batch
has started, the item fails with `DeadlineExceeded` and is never run; once started, the
item gets its result whatever the clock says. Items whose caller went away (cancelled
future) are dropped when the loop next looks, or when their slot is needed for admission.

The batch function is synchronous and runs in this batcher's own worker threads
(`workers` of them: that many batches may run at once, like Triton's instance count), so
the event loop never blocks; while batches run, the next one accumulates. Its outputs are
handed back in input order. With `adaptive_size`, a `BatchSizer` caps batches at the size
that measured the most items per second (see `batcher/sizing.py`); `calibrate` seeds it
before serving. An exception fails exactly the futures of that batch and the
loop goes on; observer errors are logged and never stop serving. If the loop itself dies,
every queued and running item fails with `BatcherClosed` (no caller waits forever) and
`running` turns False. `close()` stops admission and, by default, drains what is queued.

With a `CoreGate` (batcher/gate.py: models sharing CPU cores), a due batch waits for one
of the gate's slots before it is cut, and items that arrive meanwhile join it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from batcher.errors import BatcherClosed, DeadlineExceeded, Overloaded
from batcher.gate import CoreGate, current_due_since
from batcher.sizing import BatchSizer

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")

log = logging.getLogger("audioserve.batcher")


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float | None = 30.0
    """Default per-item deadline, counted from `submit` (None: no deadline)."""
    bucket_by_length: bool = True
    dispatch_when_idle: bool = False
    """Run what is queued as soon as a worker is free instead of waiting `max_wait_ms`:
    lower latency at low load, smaller batches (more compute) under moderate load."""
    announced_arrivals: bool = False
    """Wait `max_wait_ms` for batch-mates only while callers announce items on their way
    (`expecting()`); with none announced, cut the batch at once. Under load batches fill
    as before; alone, an item does not wait for company that cannot come."""
    workers: int = 1
    """Batches that may run at once. One per GPU stream; on CPU two single-threaded
    batches overlap better than one batch on two threads (bench/results/batch-sizing)."""
    core_slots: int = 0
    """0: batches compute on their own device or threads. n > 0: on CPU cores that other
    models' batches share; whoever builds the batchers gives them one `CoreGate` of n
    slots (service.seam.handoff.LocalSeam does), so batches run one per slot, oldest
    due work first, instead of all at once."""
    adaptive_size: bool = False
    """Cap batches at the measured best size instead of always filling `max_batch_size`."""
    max_padded_units: int | None = None
    """The most `length` units one batch may hold once padded (items x the longest
    item's length); None: no bound but `max_batch_size`. For batch functions whose memory
    grows with the padded input: it bounds what one batch allocates, and so what `workers`
    batches at once do, whatever the callers submit. A lone item over it still runs."""
    cost_clock: Literal["wall", "thread_cpu"] = "wall"
    """What a batch costs, for the sizer. `wall`: its duration (a GPU's time). `thread_cpu`:
    the worker thread's CPU time, right when the batch function computes on that thread
    (ORT on CPU with one intra-op thread): a small batch waits as long for the GIL as a
    large one, and wall time charged those waits, CPU that other threads were using
    meanwhile, as cost (batch 1 measured 141 ms per window under load against 91 for
    batch 4, while batch 1 served more requests per second)."""

    def __post_init__(self) -> None:
        if (self.max_batch_size < 1 or self.max_queue < 1 or self.max_wait_ms < 0
                or self.workers < 1 or self.core_slots < 0
                or (self.max_padded_units is not None and self.max_padded_units < 1)):
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
    limit: int = 0
    """The batch-size cap in force when the batch was cut (the adaptive one, if learnt)."""


class BatchObserver(Protocol):
    """Receives the batcher's measurements; the service implements it with Prometheus."""

    def on_queue_depth(self, depth: int) -> None: ...

    def on_batch(self, stats: BatchStats) -> None: ...

    def on_reject(self, reason: str) -> None: ...

    def on_limit(self, limit: int) -> None:
        """The batch-size cap now in force: at start, and each time it is learnt anew."""


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    length: int
    future: asyncio.Future[R]
    enqueued_at: float
    deadline: float | None
    due: float
    """Since when its work has been due (`batcher.gate.due_since`): the core gate's order."""
    started: bool = False
    timer: asyncio.TimerHandle | None = None


class DynamicBatcher(Generic[T, R]):
    """Batches `submit(item)` calls into `batch_fn(items) -> results` calls."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        config: BatchConfig | None = None,
        *,
        name: str = "batcher",
        observer: BatchObserver | None = None,
        gate: CoreGate | None = None,
    ) -> None:
        """`gate`: shared with the batchers of other models computing on the same CPU
        cores; each batch then computes only while it holds one of the gate's slots."""
        self.name = name
        self._gate = gate
        self.config = config or BatchConfig()
        self._batch_fn = batch_fn
        self._observer = observer
        self._queue: list[_Pending[T, R]] = []
        self._running: dict[int, list[_Pending[T, R]]] = {}
        self._wakeup = asyncio.Event()
        self._expected = 0
        self._executor = ThreadPoolExecutor(max_workers=self.config.workers,
                                            thread_name_prefix=f"{name}-worker")
        self.sizer = BatchSizer(self.config.max_batch_size) if self.config.adaptive_size else None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._mean_batch_s = 0.05
        self.batches_run = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)
            if self._observer is not None:
                self._observer.on_limit(self.size_limit)

    @property
    def running(self) -> bool:
        """False once the loop has ended (closed, or died: the service then reports not ready)."""
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def size_limit(self) -> int:
        """The most items the next batch takes."""
        return self.sizer.limit if self.sizer is not None else self.config.max_batch_size

    def describe(self) -> dict[str, object]:
        """The batching in force, for GET /v1/models."""
        described: dict[str, object] = {
            "max_batch_size": self.config.max_batch_size, "workers": self.config.workers,
            "adaptive": self.sizer is not None, "size_limit": self.size_limit,
        }
        if self._gate is not None:  # sharing the CPU cores with other models' batches
            described["core_gate_slots"] = self._gate.slots
        if self.config.max_padded_units is not None:
            described["max_padded_units"] = self.config.max_padded_units
        if self.sizer is not None:  # what the cap was chosen from
            described["ms_per_unit"] = {str(size): round(cost * 1000, 4)
                                        for size, cost in self.sizer.costs().items()}
        return described

    async def calibrate(self, item: T, *, length: int = 0, repeats: int = 3
                        ) -> dict[int, float]:
        """Run `item` repeated at every rung of the size ladder, before serving.

        Each shape runs once untimed (first runs allocate and plan), then `repeats` times
        on every worker at once, as it will run under load: concurrent batches compete for
        cache and memory bandwidth (CLAP on 2 cores, two workers: batch 8 cost 1.2-1.5x per
        item against batch 1 over four runs; one single-threaded batch alone, 1.07x). The
        best round seeds the adaptive sizer. It also brings the runtime's memory pools to
        the largest batch's high-water mark at start rather than under the first load.
        Returns seconds per batch by size.
        """
        loop = asyncio.get_running_loop()
        sizes = self.sizer.rungs if self.sizer is not None else [self.config.max_batch_size]
        fit = self._fitting(length)  # never calibrate a batch that serving would not cut
        sizes = [size for size in sizes if size <= fit] or [fit]
        timings: dict[int, float] = {}
        for size in sizes:
            batch = [item] * size
            await loop.run_in_executor(self._executor, self._batch_fn, batch)
            rounds = []
            for _ in range(repeats):
                runs = await asyncio.gather(*(
                    loop.run_in_executor(self._executor, self._timed_call, batch)
                    for _ in range(self.config.workers)))
                rounds.append(sum(cost for _, _, cost in runs) / len(runs))
            timings[size] = min(rounds)
            if self.sizer is not None:
                self.sizer.observe(size, size * max(length, 1), timings[size])
        if self._observer is not None:
            self._observer.on_limit(self.size_limit)
        if self.sizer is not None:
            log.info("%s: batch cap %d of %d after calibration (ms per batch: %s)", self.name,
                     self.sizer.limit, self.config.max_batch_size,
                     ", ".join(f"{s}: {t * 1000:.1f}" for s, t in timings.items()))
        return timings

    async def close(self, drain: bool = True) -> None:
        """Stop admitting items; run what is queued (drain) or fail it with BatcherClosed."""
        self._closing = True
        if not drain:
            self._fail_all(self._queue, f"{self.name} closed")
            self._queue.clear()
        self._wakeup.set()
        if self._task is not None:
            await asyncio.wait({self._task})  # a dead loop's error was logged when it died
            if not self._task.cancelled():
                self._task.exception()
        await asyncio.to_thread(self._executor.shutdown, True)

    # -- submission ------------------------------------------------------------------

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce an item on its way to `submit` while its caller prepares it (decodes
        the upload, say): queued items may wait `max_wait_ms` for it.

        Submit right after leaving the block (no await in between): the submit wakes the
        loop. Leaving by an exception wakes the loop too, so it stops waiting for an item
        that will never come."""
        self._expected += 1
        arrived = False
        try:
            yield
            arrived = True
        finally:
            self._expected -= 1
            if not arrived:
                self._wakeup.set()

    async def submit(
        self,
        item: T,
        *,
        length: int = 0,
        timeout_s: float | None = -1.0,
        deadline: float | None = None,
    ) -> R:
        """Queue one item and wait for its result.

        `timeout_s` overrides the config's deadline (None disables it); `deadline`, an
        absolute `time.monotonic()` value (e.g. the request's, set when it arrived),
        tightens it further. Raises `Overloaded` when the queue is full, `DeadlineExceeded`
        when the deadline passes before the item is run, `BatcherClosed` during shutdown,
        or whatever the batch function raised.
        """
        if self._closing or not self.running:
            raise BatcherClosed(f"{self.name} is not accepting work")
        if len(self._queue) >= self.config.max_queue:
            self._drop_dead()  # callers that went away still hold slots until dropped
            if len(self._queue) >= self.config.max_queue:
                self._report_reject("queue_full")
                raise Overloaded(
                    f"{self.name} queue is full ({self.config.max_queue} waiting)",
                    retry_after_s=self.retry_after_s(),
                )
        timeout = self.config.timeout_s if timeout_s == -1.0 else timeout_s
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is not None:
            timeout = deadline - now if timeout is None else min(timeout, deadline - now)
        pending: _Pending[T, R] = _Pending(
            item=item,
            length=length,
            future=loop.create_future(),
            enqueued_at=now,
            deadline=None if timeout is None else now + timeout,
            due=current_due_since(),
        )
        if timeout is not None:
            pending.timer = loop.call_later(max(0.0, timeout), self._expire, pending)
        self._queue.append(pending)
        self._report_depth()
        self._wakeup.set()
        try:
            return await pending.future
        finally:
            pending.future.cancel()  # no-op when done; if the caller went away, skip it
            if pending.timer is not None:
                pending.timer.cancel()

    def retry_after_s(self) -> float:
        """A rough wait until the queue has room: the queued batches times a batch's time."""
        batches = len(self._queue) / (self.size_limit * self.config.workers)
        return max(1.0, batches * self._mean_batch_s)

    def _expire(self, pending: _Pending[T, R]) -> None:
        """Deadline timer: fail the item unless its batch has already started."""
        if pending.started or pending.future.done():
            return
        pending.future.set_exception(
            DeadlineExceeded(f"{self.name}: not started within the item's deadline")
        )
        self._report_reject("deadline")

    # -- the loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self.config.workers)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            free.release()

        try:
            while True:
                await free.acquire()
                batch = await self._next_batch()
                if batch is None:
                    break
                for pending in batch:  # from here the item runs, whatever the clock says
                    pending.started = True
                self._running[id(batch)] = batch  # counted busy before the next cut
                task = asyncio.get_running_loop().create_task(self._run(batch))
                tasks.add(task)
                task.add_done_callback(done)
            if tasks:
                await asyncio.wait(tasks)
        except asyncio.CancelledError:
            log.warning("%s: batch loop cancelled", self.name)
            raise
        except Exception:
            log.exception("%s: batch loop died", self.name)
            raise
        finally:  # whatever ended the loop, nobody is left waiting
            self._closing = True
            running = [p for batch in self._running.values() for p in batch]
            self._fail_all(running + self._queue, f"{self.name} stopped")
            self._queue.clear()

    async def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait until a batch is due (and, with a gate, a core is granted to it), then cut
        it. None: closing and nothing is left."""
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
            if (
                self._enough_queued()
                or remaining <= 0
                or self._closing
                or cfg.dispatch_when_idle
                or (cfg.announced_arrivals and not self._expected)
            ):
                if self._gate is None:
                    return self._cut()
                if await self._gated():
                    return self._cut()  # the slot passes to the batch; _run releases it
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _gated(self) -> bool:
        """Wait for a core for the queue's oldest due work. True: granted, and items are
        queued to cut at once (what came while waiting joins the batch); False: the queue
        emptied meanwhile (callers gone, deadlines past) and the slot went back."""
        assert self._gate is not None
        await self._gate.acquire(min(p.due for p in self._queue))
        self._drop_dead()
        if self._queue:
            return True
        self._gate.release()
        return False

    def _drop_dead(self) -> None:
        """Remove items nobody waits for, and fail those whose deadline has passed."""
        now = time.monotonic()
        live = []
        for pending in self._queue:
            if pending.deadline is not None and now >= pending.deadline:
                self._expire(pending)  # its timer may lag; never run a late item
            if not pending.future.done():
                live.append(pending)
        if len(live) != len(self._queue):
            self._queue = live
            self._report_depth()

    def _enough_queued(self) -> bool:
        """A full batch is queued: `size_limit` items, or as many units as a batch may hold
        (with long items the units budget fills first; waiting cannot make it larger)."""
        if len(self._queue) >= self.size_limit:
            return True
        budget = self.config.max_padded_units
        return budget is not None and sum(p.length for p in self._queue) >= budget

    def _fitting(self, length: int) -> int:
        """The most items of `length` one batch may hold."""
        budget = self.config.max_padded_units
        if budget is None:
            return self.config.max_batch_size
        return max(1, min(self.config.max_batch_size, budget // max(length, 1)))

    def _cut(self) -> list[_Pending[T, R]]:
        """The oldest item plus the queued items closest to it in length (or the next ones,
        without bucketing) that fit the size cap and the padded-units budget."""
        queue = self._queue
        size = self.sizer.size_for(len(queue)) if self.sizer is not None else self.size_limit
        # Share a short queue among the idle workers: two items on two idle workers finish
        # sooner than one batch of two on one worker (a lone multi-window request, say).
        idle = self.config.workers - len(self._running)
        size = min(size, -(-len(queue) // max(idle, 1)))
        budget = self.config.max_padded_units
        candidates: Sequence[int] = range(1, len(queue))
        if self.config.bucket_by_length and (len(queue) > size or budget is not None):
            anchor = queue[0].length
            candidates = sorted(candidates, key=lambda i: (abs(queue[i].length - anchor), i))
        chosen, longest = {0}, queue[0].length
        for i in candidates:
            if len(chosen) == size:
                break
            wider = max(longest, queue[i].length)
            if budget is not None and (len(chosen) + 1) * wider > budget:
                continue  # a shorter one further on may still fit
            chosen.add(i)
            longest = wider
        batch = [p for i, p in enumerate(queue) if i in chosen]
        self._queue = [p for i, p in enumerate(queue) if i not in chosen]
        self._report_depth()
        return batch

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        started_at = time.monotonic()
        limit = self.size_limit
        failed = False
        compute_s = cost_s = 0.0
        try:
            try:
                results, compute_s, cost_s = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed_call, [p.item for p in batch]
                )
            finally:
                if self._gate is not None:
                    self._gate.release()
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
        del self._running[id(batch)]
        self._mean_batch_s = 0.8 * self._mean_batch_s + 0.2 * (time.monotonic() - started_at)
        self.batches_run += 1
        if self.sizer is not None and not failed:
            work = sum(max(p.length, 1) for p in batch)
            self.sizer.observe(len(batch), work, cost_s)
        self._report_batch(batch, started_at, compute_s, failed, limit)

    def _timed_call(self, items: list[T]) -> tuple[Sequence[R], float, float]:
        """The batch function, its duration and its cost (`cost_clock`), timed in the worker
        thread: timed from the event loop, each batch would also carry the loop's lag in
        resuming it (tens of ms under load)."""
        cpu0, t0 = time.thread_time(), time.perf_counter()
        results = self._batch_fn(items)
        wall = time.perf_counter() - t0
        cost = time.thread_time() - cpu0 if self.config.cost_clock == "thread_cpu" else wall
        return results, wall, cost

    # -- reporting -------------------------------------------------------------------

    def _fail_all(self, pendings: list[_Pending[T, R]], message: str) -> None:
        for pending in pendings:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed(message))

    def _report_batch(
        self, batch: list[_Pending[T, R]], started_at: float, compute_s: float, failed: bool,
        limit: int,
    ) -> None:
        if self._observer is None:
            return
        lengths = [p.length for p in batch]
        padded = max(lengths) * len(lengths)
        stats = BatchStats(
            size=len(batch),
            queue_waits_s=tuple(started_at - p.enqueued_at for p in batch),
            compute_s=compute_s,
            padding_fraction=(1.0 - sum(lengths) / padded) if padded else 0.0,
            failed=failed,
            limit=limit,
        )
        self._notify(self._observer.on_batch, stats)

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._notify(self._observer.on_queue_depth, len(self._queue))

    def _report_reject(self, reason: str) -> None:
        if self._observer is not None:
            self._notify(self._observer.on_reject, reason)

    def _notify(self, hook: Callable[[V], None], value: V) -> None:
        """Metrics must never take serving down: log an observer's error and go on."""
        try:
            hook(value)
        except Exception:
            log.exception("%s: observer %s failed", self.name, hook.__name__)
