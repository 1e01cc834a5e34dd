"""The adaptive batch cap (batcher/sizing.py) and parallel batch workers.

The sizer is checked against cost curves of the two shapes seen on real hardware: per-item
cost falling with batch size (a GPU: the cap stays at the maximum) and rising (CLAP on a
2-core CPU: the cap comes down to the cheap end), then inside a running batcher whose batch
function really takes that long.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from batcher import BatchConfig, BatchSizer, DynamicBatcher
from batcher.sizing import ladder
from tests.conftest import HANG_S
from tests.test_batcher import FakeModel, Out, RecordingObserver, Seq, make_seq, run_with, submit


def gpu_like(size: int) -> float:
    """Seconds per batch: a fixed launch cost dominates, so bigger is cheaper per item."""
    return 0.010 + 0.001 * size


def cpu_like(size: int) -> float:
    """Seconds per batch: per-item cost grows with the batch (activations leave cache)."""
    return 0.010 * size * (1 + 0.5 * size)


def drive(sizer: BatchSizer, cost, queued: int, batches: int) -> list[int]:
    """Cut `batches` batches from a queue that never drains, feeding back their cost."""
    sizes = []
    for _ in range(batches):
        size = sizer.size_for(queued)
        sizer.observe(size, size, cost(size))
        sizes.append(size)
    return sizes


def test_ladder_is_powers_of_two_then_the_maximum() -> None:
    assert ladder(1) == [1]
    assert ladder(8) == [1, 2, 4, 8]
    assert ladder(12) == [1, 2, 4, 8, 12]


def test_unmeasured_sizer_fills_the_configured_maximum() -> None:
    sizer = BatchSizer(8)
    assert sizer.limit == 8
    assert sizer.size_for(3) == 3
    assert sizer.size_for(20) == 8


@pytest.mark.parametrize(("cost", "expected"), [(gpu_like, 8), (cpu_like, 1)])
def test_calibrated_sizer_caps_at_the_cheapest_size_per_item(cost, expected) -> None:
    sizer = BatchSizer(8)
    for size in sizer.rungs:
        sizer.observe(size, size, cost(size))
    assert sizer.limit == expected


def test_near_equal_costs_prefer_the_smaller_batch() -> None:
    """Same throughput, sooner answers."""
    sizer = BatchSizer(8, tolerance=0.05)
    for size, per_item in [(1, 1.03), (2, 1.00), (4, 1.02), (8, 1.50)]:
        sizer.observe(size, size, per_item * size)
    assert sizer.limit == 1


def test_exploration_walks_the_cap_down_to_the_cheap_end_under_load() -> None:
    """Started from the maximum with no table, as a batcher without calibration is."""
    sizer = BatchSizer(8, explore_every=4)
    sizes = drive(sizer, cpu_like, queued=64, batches=80)
    assert sizes[0] == 8
    assert sizer.limit == 1
    assert sizes[-8:].count(1) >= 6  # capped at 1, bar the periodic look at size 2


def test_exploration_climbs_back_when_bigger_batches_get_cheaper() -> None:
    """The machine changes (e.g. another model stops competing): the cap follows."""
    sizer = BatchSizer(8, explore_every=4)
    drive(sizer, cpu_like, queued=64, batches=80)
    assert sizer.limit == 1
    drive(sizer, gpu_like, queued=64, batches=200)
    assert sizer.limit == 8


def test_batches_off_the_ladder_and_failed_timings_are_ignored() -> None:
    sizer = BatchSizer(8)
    sizer.observe(3, 3, 1.0)
    sizer.observe(2, 2, 0.0)
    assert sizer.costs() == {}


def burn(seconds: float) -> None:
    """Compute for `seconds` of this thread's CPU time: under `cost_clock="thread_cpu"`
    the batcher then measures exactly that, however busy or fast the machine is."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


CPU_SCALE = 0.1
"""The cost curves' seconds, scaled: only their ratios matter to the sizer."""


def timed_model(cost) -> FakeModel:
    """The fake padded model, computing cost(batch size) x CPU_SCALE CPU-seconds per call
    (run it with cost_clock="thread_cpu")."""

    class Timed(FakeModel):
        def __call__(self, items: list[Seq]) -> list[Out]:
            burn(cost(len(items)) * CPU_SCALE)
            return super().__call__(items)

    return Timed()


@pytest.mark.parametrize(("cost", "expected"), [(gpu_like, 8), (cpu_like, 1)])
def test_batcher_learns_the_cap_and_answers_every_item_exactly(cost, expected) -> None:
    model = timed_model(cost)
    observer = RecordingObserver()
    items = [make_seq(i, 5 + i % 3) for i in range(48)]
    want = FakeModel()(items)

    async def scenario(b: DynamicBatcher[Seq, Out]):
        timings = await b.calibrate(make_seq(999, 6), length=6)
        assert sorted(timings) == [1, 2, 4, 8]
        limit_after_calibration = b.size_limit
        got = await asyncio.gather(*(submit(b, s) for s in items))
        return limit_after_calibration, got

    limit, got = run_with(model, scenario, observer, max_batch_size=8, max_wait_ms=2,
                          adaptive_size=True, cost_clock="thread_cpu")
    assert limit == expected
    for a, w in zip(got, want, strict=True):
        assert a.id == w.id and np.array_equal(a.values, w.values)
    # A timing hiccup may move the cap for a while; most batches must run under the learnt one.
    capped = [s.size for s in observer.stats if s.limit == expected]
    assert len(capped) >= 0.75 * len(observer.stats)
    assert max(capped) <= max(expected, 2)  # the cap, or one exploring step up


def test_fixed_size_calibration_runs_only_the_largest_batch() -> None:
    model = FakeModel()

    async def scenario(b: DynamicBatcher[Seq, Out]):
        return await b.calibrate(make_seq(1, 4))

    timings = run_with(model, scenario, max_batch_size=4, workers=2)
    assert list(timings) == [4]
    assert model.batches == [[1] * 4] * (1 + 3 * 2)  # one untimed run, 3 rounds on 2 workers


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_bound_how_many_batches_run_at_once(workers: int) -> None:
    """The first batches wait inside the call until `workers` of them run at once (an
    event, not a sleep that hopes they overlap); no more than that ever do."""
    running, peak, lock = 0, 0, threading.Lock()
    all_busy = threading.Event()

    class Counting(FakeModel):
        def __call__(self, items: list[Seq]) -> list[Out]:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
                if running == workers:
                    all_busy.set()
            all_busy.wait(timeout=HANG_S)
            with lock:
                running -= 1
            return super().__call__(items)

    items = [make_seq(i, 4) for i in range(8)]

    async def scenario(b: DynamicBatcher[Seq, Out]):
        return await asyncio.gather(*(submit(b, s) for s in items))

    got = run_with(Counting(), scenario, max_batch_size=2, max_wait_ms=0, workers=workers)
    assert [o.id for o in got] == list(range(8))
    assert all_busy.is_set() and peak == workers


def test_a_batch_failing_in_one_worker_leaves_the_other_serving() -> None:
    model = FakeModel(delay_s=0.02)
    good = [make_seq(i, 3) for i in range(6)]
    bad = make_seq(100, 3, poison=True)

    async def scenario(b: DynamicBatcher[Seq, Out]):
        return await asyncio.gather(submit(b, bad), *(submit(b, s) for s in good),
                                    return_exceptions=True)

    got = run_with(model, scenario, max_batch_size=1, max_wait_ms=0, workers=2)
    assert isinstance(got[0], ValueError)
    assert [o.id for o in got[1:]] == list(range(6))


def test_worker_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchConfig(workers=0)


def test_a_short_queue_is_shared_among_idle_workers() -> None:
    """Two windows of one lone request run side by side, not as one batch on one worker;
    once every worker is busy, batches fill up as usual."""
    model = FakeModel(delay_s=0.05)
    observer = RecordingObserver()

    async def scenario(b: DynamicBatcher[Seq, Out]):
        lone = await asyncio.gather(*(submit(b, make_seq(i, 4)) for i in range(2)))
        busy = await asyncio.gather(*(submit(b, make_seq(10 + i, 4)) for i in range(12)))
        return lone + busy

    got = run_with(model, scenario, observer, max_batch_size=8, max_wait_ms=20, workers=2)
    assert [o.id for o in got] == [0, 1, *range(10, 22)]
    assert model.batches[:2] == [[0], [1]]
    assert max(len(batch) for batch in model.batches[2:]) >= 4


@pytest.mark.parametrize(("clock", "expected"), [("wall", 8), ("thread_cpu", 1)])
def test_cost_clock_charges_waiting_or_only_computing(clock: str, expected: int) -> None:
    """A batch that waits 100 ms (for the GIL, say) whatever its size, then computes
    0.25 ms x size^2: by the wall the wait dominates and 8 looks cheapest per item (even
    if a busy machine stretched the computing 12x: at load 12 on 2 cores a 50 ms wait and
    one timed round per size were not enough; the best of 3 rounds counts); by the worker
    thread's CPU time the compute does, and 1 is, exactly."""

    class WaitsThenComputes(FakeModel):
        def __call__(self, items: list[Seq]) -> list[Out]:
            time.sleep(0.1)
            burn(0.00025 * len(items) ** 2)
            return super().__call__(items)

    async def scenario(b: DynamicBatcher[Seq, Out]):
        await b.calibrate(make_seq(1, 4), repeats=3)
        return b.size_limit

    assert run_with(WaitsThenComputes(), scenario, max_batch_size=8, adaptive_size=True,
                    cost_clock=clock) == expected


def test_a_batch_costs_per_unit_of_real_work_so_its_padding_counts() -> None:
    """Lengths 2 and 20 padded to 20: 22 units of work, 40 computed. The sizer must charge
    the batch's time to the 22 (the padding is what batching these two costs)."""
    model = timed_model(lambda size: 0.2 / CPU_SCALE if size == 2 else 0.0)

    async def scenario(b: DynamicBatcher[Seq, Out]) -> dict[int, float]:
        await asyncio.gather(submit(b, make_seq(0, 2)), submit(b, make_seq(1, 20)))
        assert b.sizer is not None
        return b.sizer.costs()

    costs = run_with(model, scenario, max_batch_size=2, max_wait_ms=10_000, adaptive_size=True,
                     cost_clock="thread_cpu")
    assert model.batches == [[0, 1]]
    assert 0.2 / 22 <= costs[2] < 0.2 / 22 * 1.5  # per padded unit it would be 0.2 / 40
