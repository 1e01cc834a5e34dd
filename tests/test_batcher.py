"""The dynamic batcher, driven by a deterministic batch function (no model, no ORT).

Each item is an int sequence with an id; the fake batch function pads the batch into one
2-D array (like a model would), computes a per-row result that does not depend on its
batch-mates, and records every batch it saw, so tests can check who ran with whom.
Timing assertions use wide margins: they tell "waited max_wait" from "waited forever" or
"blocked the loop", never fast from slightly less fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from batcher import (
    BatchConfig,
    BatcherClosed,
    BatcherError,
    BatchStats,
    DeadlineExceeded,
    DynamicBatcher,
    Overloaded,
)
from tests.conftest import HANG_S

NEVER_MS = 3_600_000
"""A max_wait no test outlives (run_with's hang guard is HANG_S): a batch that is done at
all was not held for it, whatever the machine's speed."""


@dataclass(frozen=True)
class Seq:
    id: int
    values: np.ndarray
    poison: bool = False

    @property
    def length(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Out:
    id: int
    values: np.ndarray


def make_seq(item_id: int, length: int, *, poison: bool = False) -> Seq:
    rng = np.random.default_rng(item_id + 1000)
    return Seq(item_id, rng.integers(-50, 50, size=length, dtype=np.int64), poison)


class FakeModel:
    """A padded 'forward pass' whose per-row output ignores batch-mates and padding."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.entered = threading.Event()  # set when a call begins
        self.gate = threading.Event()  # calls wait on it; open unless a test closes it
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, items: list[Seq]) -> list[Out]:
        with self._lock:
            self.batches.append([s.id for s in items])
        self.entered.set()
        if not self.gate.wait(timeout=HANG_S):
            raise RuntimeError("test gate never opened")
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(s.poison for s in items):
            raise ValueError(f"poisoned batch {[s.id for s in items]}")
        width = max(s.length for s in items)
        padded = np.zeros((len(items), width), dtype=np.int64)
        for row, s in enumerate(items):
            padded[row, : s.length] = s.values
        computed = np.cumsum(padded * 3 + 1, axis=1)
        return [Out(s.id, computed[row, : s.length].copy()) for row, s in enumerate(items)]

    @property
    def seen_ids(self) -> set[int]:
        return {i for batch in self.batches for i in batch}


@dataclass
class RecordingObserver:
    depths: list[int] = field(default_factory=list)
    stats: list[BatchStats] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def on_batch(self, stats: BatchStats) -> None:
        self.stats.append(stats)

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)

    def on_limit(self, limit: int) -> None:
        pass


Scenario = Callable[[DynamicBatcher[Seq, Out]], Awaitable[Any]]


def run_with(
    model: FakeModel,
    scenario: Scenario,
    observer: RecordingObserver | None = None,
    **config: Any,
) -> Any:
    """Start a batcher in a fresh event loop, play the scenario, then close it (drained)."""

    async def main() -> Any:
        batcher = DynamicBatcher(model, BatchConfig(**config), name="test", observer=observer)
        batcher.start()
        try:
            return await asyncio.wait_for(scenario(batcher), timeout=HANG_S)
        finally:
            model.gate.set()
            await batcher.close()

    return asyncio.run(main())


def submit(b: DynamicBatcher[Seq, Out], s: Seq, **kw: Any) -> Coroutine[Any, Any, Out]:
    return b.submit(s, length=s.length, **kw)


async def start_blocked_batch(
    b: DynamicBatcher[Seq, Out], model: FakeModel, fill: int = 1
) -> asyncio.Future:
    """Occupy the worker with `fill` items (ids -1, -2, ...) held at the gate, so later
    items queue up. `fill` must make a full batch unless max_wait is short."""
    model.gate.clear()
    running = asyncio.gather(*(submit(b, make_seq(-1 - i, 3)) for i in range(fill)))
    while not model.entered.is_set():
        await asyncio.sleep(0.005)
    return running


async def settle() -> None:
    """Let freshly created submit tasks reach the queue."""
    for _ in range(3):
        await asyncio.sleep(0)


def unbatched(model: FakeModel, s: Seq) -> Out:
    return FakeModel()([s])[0]


# -- batching ---------------------------------------------------------------------------


def test_concurrent_submits_are_batched_and_answered_correctly() -> None:
    model = FakeModel(delay_s=0.01)
    items = [make_seq(i, 5 + i % 7) for i in range(32)]

    async def scenario(b: DynamicBatcher[Seq, Out]) -> list[Out]:
        return await asyncio.gather(*(submit(b, s) for s in items))

    outs = run_with(model, scenario, max_batch_size=8, max_wait_ms=50)
    sizes = [len(batch) for batch in model.batches]
    assert max(sizes) > 1, sizes
    assert all(size <= 8 for size in sizes)
    assert sum(sizes) == 32 and model.seen_ids == set(range(32))
    for s, out in zip(items, outs, strict=True):
        assert out.id == s.id
        np.testing.assert_array_equal(out.values, unbatched(model, s).values)


def test_a_full_batch_is_cut_without_waiting_max_wait() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        await asyncio.gather(*(submit(b, make_seq(i, 4)) for i in range(4)))

    run_with(model, scenario, max_batch_size=4, max_wait_ms=NEVER_MS)  # done: not waited
    assert model.batches == [[0, 1, 2, 3]]


def test_a_lone_item_waits_about_max_wait_not_forever() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> float:
        t0 = time.monotonic()
        await submit(b, make_seq(0, 4))
        return time.monotonic() - t0

    elapsed = run_with(
        model, scenario, max_batch_size=8, max_wait_ms=300, dispatch_when_idle=False
    )
    assert elapsed >= 0.29  # waited max_wait (and, by run_with's hang guard, not forever)
    assert model.batches == [[0]]


def test_results_match_unbatched_calls_for_every_caller() -> None:
    items = [make_seq(i, 1 + (i * 37) % 29) for i in range(40)]

    async def scenario(b: DynamicBatcher[Seq, Out]) -> list[Out]:
        return await asyncio.gather(*(submit(b, s) for s in items))

    batched_model, single_model = FakeModel(), FakeModel()
    batched = run_with(batched_model, scenario, max_batch_size=8, max_wait_ms=30)
    one_by_one = run_with(single_model, scenario, max_batch_size=1, max_wait_ms=0)
    assert max(len(b) for b in batched_model.batches) > 1
    assert all(len(b) == 1 for b in single_model.batches)
    for s, a, b in zip(items, batched, one_by_one, strict=True):
        direct = unbatched(FakeModel(), s)
        assert a.id == b.id == s.id
        np.testing.assert_array_equal(a.values, direct.values)
        np.testing.assert_array_equal(b.values, direct.values)


# -- length bucketing -------------------------------------------------------------------


def _mixed_lengths_run(bucket: bool) -> tuple[FakeModel, RecordingObserver]:
    """Queue 24 interleaved short/long items behind a blocked batch, then let them run."""
    model, observer = FakeModel(), RecordingObserver()
    lengths = [2 + i % 4 if i % 2 == 0 else 100 + i % 5 for i in range(24)]

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        blocker = await start_blocked_batch(b, model)
        tasks = [asyncio.create_task(submit(b, make_seq(i, n))) for i, n in enumerate(lengths)]
        await settle()
        assert b.queue_depth == 24
        model.gate.set()
        await asyncio.gather(blocker, *tasks)

    run_with(model, scenario, observer, max_batch_size=4, max_wait_ms=10, bucket_by_length=bucket)
    return model, observer


def test_length_bucketing_pads_less_than_fifo_and_never_starves_the_oldest() -> None:
    bucket_model, bucket_obs = _mixed_lengths_run(bucket=True)
    fifo_model, fifo_obs = _mixed_lengths_run(bucket=False)

    def mean_padding(obs: RecordingObserver) -> float:
        queued = obs.stats[1:]  # skip the blocker's batch
        return sum(s.padding_fraction for s in queued) / len(queued)

    assert mean_padding(bucket_obs) < 0.5 * mean_padding(fifo_obs)
    for model in (bucket_model, fifo_model):
        assert model.seen_ids == set(range(-1, 24))
        pending = set(range(24))
        for batch in model.batches[1:]:
            assert min(pending) in batch, "the oldest queued item must be in the next batch"
            pending -= set(batch)


# -- padded-units budget ----------------------------------------------------------------

BUDGET = 30
"""Units one batch may hold padded (max_padded_units) in the budget tests."""


@pytest.mark.parametrize("bucket", [True, False])
def test_no_batch_holds_more_padded_units_than_the_budget(bucket: bool) -> None:
    """Long items run one per batch, short ones still fill a batch up to the budget, and an
    item over the budget runs alone; every result is still the unbatched one."""
    model = FakeModel()
    lengths = [30, 30, 30, 30, 5, 5, 5, 5, 5, 5, 40]
    items = [make_seq(i, n) for i, n in enumerate(lengths)]

    async def scenario(b: DynamicBatcher[Seq, Out]) -> list[Out]:
        blocker = await start_blocked_batch(b, model)
        tasks = [asyncio.create_task(submit(b, s)) for s in items]
        await settle()
        assert b.queue_depth == len(items)
        model.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    outs = run_with(model, scenario, max_batch_size=8, max_wait_ms=10,
                    bucket_by_length=bucket, max_padded_units=BUDGET)
    assert model.batches[1:] == [[0], [1], [2], [3], [4, 5, 6, 7, 8, 9], [10]]
    for batch in model.batches[1:]:  # padded: items x the longest, within the budget
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= BUDGET
    for s, out in zip(items, outs, strict=True):
        np.testing.assert_array_equal(out.values, unbatched(model, s).values)


def test_a_batch_full_by_units_is_cut_without_waiting_max_wait() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        await asyncio.gather(submit(b, make_seq(0, 15)), submit(b, make_seq(1, 15)))
        await submit(b, make_seq(2, 40))  # over the budget alone: due at once, runs alone

    run_with(model, scenario, max_batch_size=8, max_wait_ms=NEVER_MS, max_padded_units=BUDGET)
    assert model.batches == [[0, 1], [2]]  # done at all: neither waited NEVER_MS


@pytest.mark.parametrize("adaptive", [True, False])
def test_calibration_runs_no_batch_over_the_budget(adaptive: bool) -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> dict[int, float]:
        return await b.calibrate(make_seq(0, 12), length=12, repeats=1)

    timings = run_with(model, scenario, max_batch_size=8, adaptive_size=adaptive,
                       max_padded_units=BUDGET)
    assert sorted(timings) == ([1, 2] if adaptive else [2])  # 2 x 12 fit in 30, 4 x 12 not
    assert {len(batch) for batch in model.batches} == set(timings)


def test_a_budget_below_one_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid batch config"):
        BatchConfig(max_padded_units=0)


# -- backpressure, deadlines, cancellation -----------------------------------------------


def test_a_full_queue_rejects_with_overloaded_and_a_retry_hint() -> None:
    model, observer = FakeModel(), RecordingObserver()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        blocker = await start_blocked_batch(b, model)
        queued = [asyncio.create_task(submit(b, make_seq(i, 3))) for i in range(4)]
        await settle()
        with pytest.raises(Overloaded) as caught:
            await submit(b, make_seq(99, 3))
        assert caught.value.retry_after_s > 0
        model.gate.set()
        outs = [*await blocker, *await asyncio.gather(*queued)]
        assert [o.id for o in outs] == [-1, 0, 1, 2, 3]

    run_with(model, scenario, observer, max_batch_size=1, max_wait_ms=0, max_queue=4)
    assert observer.rejects == ["queue_full"]
    assert 99 not in model.seen_ids


def test_cancelled_items_free_their_queue_slot() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        blocker = await start_blocked_batch(b, model)
        gone = [asyncio.create_task(submit(b, make_seq(i, 3))) for i in range(2)]
        await settle()
        for task in gone:
            task.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        fresh = [asyncio.create_task(submit(b, make_seq(10 + i, 3))) for i in range(2)]
        await settle()
        model.gate.set()
        await asyncio.gather(blocker, *fresh)

    run_with(model, scenario, max_batch_size=1, max_wait_ms=0, max_queue=2)
    assert model.seen_ids == {-1, 10, 11}


def test_deadline_passed_while_queued_fails_the_item_and_never_runs_it() -> None:
    model, observer = FakeModel(), RecordingObserver()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        blocker = await start_blocked_batch(b, model)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):  # the gate stays closed: only the deadline ends it
            await submit(b, make_seq(7, 3), timeout_s=0.2)
        assert time.monotonic() - t0 >= 0.2  # not before its deadline
        model.gate.set()
        await blocker
        await submit(b, make_seq(8, 3), timeout_s=5)  # the batcher still serves

    run_with(model, scenario, observer, max_batch_size=4, max_wait_ms=0)
    assert 7 not in model.seen_ids and 8 in model.seen_ids
    assert observer.rejects == ["deadline"]


def test_an_item_already_running_is_not_failed_by_its_deadline() -> None:
    """Held inside the call (the gate) until its deadline has passed, then let go."""
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> Out:
        model.gate.clear()
        deadline = time.monotonic() + 1.0  # time enough to be dispatched on a busy machine
        task = asyncio.create_task(submit(b, make_seq(3, 5), timeout_s=1.0))
        while not model.entered.is_set():
            await asyncio.sleep(0.005)
        while time.monotonic() <= deadline:
            await asyncio.sleep(0.05)
        model.gate.set()
        return await task

    out = run_with(model, scenario, max_batch_size=4, max_wait_ms=0)
    assert out.id == 3
    np.testing.assert_array_equal(out.values, unbatched(model, make_seq(3, 5)).values)


def test_an_item_whose_caller_was_cancelled_is_never_run() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        blocker = await start_blocked_batch(b, model)
        gone = asyncio.create_task(submit(b, make_seq(5, 3)))
        kept = asyncio.create_task(submit(b, make_seq(6, 3)))
        await settle()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.gate.set()
        await asyncio.gather(blocker, kept)

    run_with(model, scenario, max_batch_size=4, max_wait_ms=0)
    assert 5 not in model.seen_ids and 6 in model.seen_ids


# -- failures ---------------------------------------------------------------------------


def test_an_exception_fails_exactly_its_batch_and_the_next_batch_succeeds() -> None:
    model, observer = FakeModel(), RecordingObserver()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        first = [submit(b, make_seq(i, 3, poison=i == 2)) for i in range(4)]
        results = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results), results
        assert len({str(r) for r in results}) == 1  # the one exception of that batch
        second = await asyncio.gather(*(submit(b, make_seq(10 + i, 3)) for i in range(4)))
        assert [o.id for o in second] == [10, 11, 12, 13]

    run_with(model, scenario, observer, max_batch_size=4, max_wait_ms=5_000)
    assert [s.failed for s in observer.stats] == [True, False]


def test_a_wrong_number_of_results_fails_that_batch_cleanly() -> None:
    model = FakeModel()
    calls = 0

    def short_by_one(items: list[Seq]) -> list[Out]:
        nonlocal calls
        calls += 1
        outs = model(items)
        return outs[:-1] if calls == 1 else outs

    async def main() -> None:
        b = DynamicBatcher(short_by_one, BatchConfig(max_batch_size=3, max_wait_ms=5_000))
        b.start()
        results = await asyncio.gather(
            *(submit(b, make_seq(i, 3)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) and "2 results" in str(r) for r in results)
        outs = await asyncio.gather(*(submit(b, make_seq(10 + i, 3)) for i in range(3)))
        assert [o.id for o in outs] == [10, 11, 12]
        await b.close()

    asyncio.run(asyncio.wait_for(main(), HANG_S))


def test_a_failing_observer_does_not_stop_the_batcher() -> None:
    class BrokenObserver(RecordingObserver):
        def on_batch(self, stats: BatchStats) -> None:
            raise RuntimeError("metrics backend down")

    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        for i in range(3):
            assert (await submit(b, make_seq(i, 3))).id == i
        assert b.running

    run_with(model, scenario, BrokenObserver(), max_batch_size=2, max_wait_ms=0)


def test_a_dead_loop_fails_queued_and_running_items_instead_of_stranding_them() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        running = await start_blocked_batch(b, model)
        queued = asyncio.create_task(submit(b, make_seq(1, 3), timeout_s=None))
        await settle()
        assert b._task is not None
        b._task.cancel()  # stands for any crash of the loop task
        results = await asyncio.gather(running, queued, return_exceptions=True)
        assert all(isinstance(r, BatcherError) for r in results), results
        assert not b.running
        with pytest.raises(BatcherClosed):
            await submit(b, make_seq(2, 3))

    run_with(model, scenario, max_batch_size=1, max_wait_ms=0)
    assert 1 not in model.seen_ids


# -- shutdown ---------------------------------------------------------------------------


def test_close_with_drain_runs_everything_queued_before_returning() -> None:
    model = FakeModel()

    async def main() -> None:
        b = DynamicBatcher(model, BatchConfig(max_batch_size=2, max_wait_ms=NEVER_MS))
        b.start()
        blocker = await start_blocked_batch(b, model, fill=2)
        tasks = [asyncio.create_task(submit(b, make_seq(i, 3))) for i in range(5)]
        await settle()
        closing = asyncio.create_task(b.close(drain=True))
        await settle()
        with pytest.raises(BatcherClosed):
            await submit(b, make_seq(9, 3))
        model.gate.set()
        await closing  # item 4 alone would wait NEVER_MS without the drain
        assert model.seen_ids == {-2, -1, 0, 1, 2, 3, 4}
        outs = [*await blocker, *await asyncio.gather(*tasks)]
        assert [o.id for o in outs] == [-1, -2, 0, 1, 2, 3, 4]
        assert not b.running

    asyncio.run(asyncio.wait_for(main(), HANG_S))


def test_close_without_drain_fails_queued_items_and_finishes_the_running_batch() -> None:
    model = FakeModel()

    async def main() -> None:
        b = DynamicBatcher(model, BatchConfig(max_batch_size=2, max_wait_ms=0))
        b.start()
        blocker = await start_blocked_batch(b, model)
        tasks = [asyncio.create_task(submit(b, make_seq(i, 3))) for i in range(3)]
        await settle()
        closing = asyncio.create_task(b.close(drain=False))
        await settle()
        model.gate.set()
        await closing
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, BatcherClosed) for r in results), results
        assert [o.id for o in await blocker] == [-1]
        assert model.seen_ids == {-1}
        with pytest.raises(BatcherClosed):
            await submit(b, make_seq(9, 3))

    asyncio.run(asyncio.wait_for(main(), HANG_S))


def test_submit_before_start_is_refused() -> None:
    async def main() -> None:
        b = DynamicBatcher(FakeModel(), BatchConfig())
        with pytest.raises(BatcherClosed):
            await submit(b, make_seq(0, 3))

    asyncio.run(main())


# -- observation and the event loop ------------------------------------------------------


def test_the_observer_sees_depth_batch_stats_and_rejections() -> None:
    model, observer = FakeModel(delay_s=0.05), RecordingObserver()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        await asyncio.gather(submit(b, make_seq(0, 2)), submit(b, make_seq(1, 4)))
        with pytest.raises(DeadlineExceeded):
            await submit(b, make_seq(2, 2), timeout_s=0)

    run_with(model, scenario, observer, max_batch_size=2, max_wait_ms=5_000)
    first = observer.stats[0]
    assert first.size == 2 and not first.failed
    assert first.padding_fraction == pytest.approx(1 - 6 / 8)
    assert first.compute_s >= 0.04
    assert len(first.queue_waits_s) == 2 and all(w >= 0 for w in first.queue_waits_s)
    assert max(observer.depths) >= 2 and observer.depths[-1] == 0
    assert observer.rejects == ["deadline"]


def test_the_event_loop_keeps_running_while_a_batch_computes() -> None:
    """The batch function is held inside its call (at the gate) while the loop runs other
    tasks; only then is it let go. Were it called on the loop's thread, the loop could not
    run them: the gate's hang guard would fail the batch and the check below."""
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        running = await start_blocked_batch(b, model)  # the model is inside its call
        ticks = 0
        for _ in range(10):  # other tasks run meanwhile
            await asyncio.sleep(0.001)
            ticks += 1
        assert ticks == 10 and not running.done(), "the batch finished before it was let go"
        model.gate.set()
        assert [o.id for o in await running] == [-1]

    run_with(model, scenario, max_batch_size=1, max_wait_ms=0)


def test_an_idle_batcher_runs_a_lone_item_at_once_and_still_batches_bursts() -> None:
    model = FakeModel(delay_s=0.05)

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        await submit(b, make_seq(0, 3))  # done at all: it did not wait max_wait
        await asyncio.gather(*(submit(b, make_seq(i, 3)) for i in range(1, 17)))

    run_with(model, scenario, max_batch_size=8, max_wait_ms=NEVER_MS, dispatch_when_idle=True)
    assert model.batches[0] == [0]
    assert max(len(batch) for batch in model.batches) > 1


# -- announced arrivals -------------------------------------------------------------------

ANNOUNCED = {"max_batch_size": 8, "max_wait_ms": NEVER_MS, "announced_arrivals": True}


def test_with_nothing_announced_a_lone_item_runs_at_once() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]) -> None:
        await submit(b, make_seq(0, 4))  # done at all: it did not wait max_wait

    run_with(model, scenario, **ANNOUNCED)
    assert model.batches == [[0]]


def test_a_queued_item_waits_for_an_announced_one_and_shares_its_batch() -> None:
    model = FakeModel()

    async def late(b: DynamicBatcher[Seq, Out]) -> Out:
        with b.expecting():
            await asyncio.sleep(0.3)  # "decoding"
        return await submit(b, make_seq(1, 4))

    async def scenario(b: DynamicBatcher[Seq, Out]) -> float:
        t0 = time.monotonic()
        second = asyncio.create_task(late(b))
        await settle()  # announced before the first item is queued
        await asyncio.gather(submit(b, make_seq(0, 4)), second)
        return time.monotonic() - t0

    elapsed = run_with(model, scenario, **ANNOUNCED)
    assert model.batches == [[0, 1]]  # waited for the announced item, then cut (not NEVER_MS)
    assert elapsed >= 0.29


def test_an_announced_item_that_never_comes_releases_the_queue() -> None:
    model = FakeModel()

    async def failing(b: DynamicBatcher[Seq, Out]) -> None:
        with b.expecting():
            await asyncio.sleep(0.3)
            raise ValueError("undecodable upload")

    async def scenario(b: DynamicBatcher[Seq, Out]) -> float:
        t0 = time.monotonic()
        doomed = asyncio.create_task(failing(b))
        await settle()
        await submit(b, make_seq(0, 4))
        with pytest.raises(ValueError):
            await doomed
        return time.monotonic() - t0

    elapsed = run_with(model, scenario, **ANNOUNCED)
    assert model.batches == [[0]]  # released when the announcement failed, not at NEVER_MS
    assert elapsed >= 0.29
