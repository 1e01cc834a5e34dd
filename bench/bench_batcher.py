"""What the dynamic batcher costs per item, against plain calls measured in the same run.

1. Throughput: items/s through the batcher with a no-op batch function at concurrency 1, 16
   and 64 (closed loop: each client submits its next item when the last one returns),
   against each client calling the function itself through `asyncio.to_thread`.
2. Added latency at concurrency 1: the batcher (max_wait 0, and the default 5 ms) against
   `asyncio.to_thread(fn)` and a plain synchronous call.
3. Idle dispatch trade-off: open-loop Poisson arrivals on a batch function whose cost grows
   with the batch (fixed + per-item sleep), with and without `dispatch_when_idle`.

CPU us/item (process time, batcher thread included) is the steadiest overhead figure on a
shared machine; wall-clock rates move with whatever else runs.

Run from the repository root: .venv/bin/python -m bench.bench_batcher [--items 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from batcher import BatchConfig, BatchStats, DynamicBatcher

HAS_IDLE_KNOB = any(f.name == "dispatch_when_idle" for f in dataclasses.fields(BatchConfig))


def noop(items: list[int]) -> list[int]:
    return items


def config(**kw: Any) -> BatchConfig:
    if not HAS_IDLE_KNOB:
        kw.pop("dispatch_when_idle", None)
    return BatchConfig(**kw)


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    extra: str = ""


async def closed_loop(call: Callable[[int], Awaitable[Any]], total: int, clients: int) -> float:
    """items/s with `clients` concurrent callers sharing `total` items."""
    per_client = total // clients

    async def client(base: int) -> None:
        for i in range(per_client):
            await call(base + i)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c * per_client) for c in range(clients)))
    return per_client * clients / (time.perf_counter() - t0)


class SizeRecorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.compute_s = 0.0

    def on_queue_depth(self, depth: int) -> None:
        pass

    def on_batch(self, stats: BatchStats) -> None:
        self.sizes.append(stats.size)
        self.compute_s += stats.compute_s

    def on_reject(self, reason: str) -> None:
        pass

    def on_limit(self, limit: int) -> None:
        pass


@dataclass(frozen=True)
class ThroughputRow:
    clients: int
    batcher_per_s: float
    batcher_cpu_us: float
    thread_per_s: float
    thread_cpu_us: float
    mean_batch: float


async def measured(call: Callable[[int], Awaitable[Any]], total: int, clients: int) -> tuple:
    """(items/s, CPU microseconds per item)."""
    cpu0 = time.process_time()
    rate = await closed_loop(call, total, clients)
    return rate, (time.process_time() - cpu0) / total * 1e6


async def throughput(total: int) -> list[ThroughputRow]:
    rows = []
    for clients in (1, 16, 64):
        sizes = SizeRecorder()
        b = DynamicBatcher(
            noop, config(max_batch_size=64, max_wait_ms=0, max_queue=4096), observer=sizes
        )
        b.start()
        via_batcher = await measured(b.submit, total, clients)
        await b.close()
        via_thread = await measured(lambda x: asyncio.to_thread(noop, [x]), total, clients)
        rows.append(ThroughputRow(clients, *via_batcher, *via_thread, statistics.mean(sizes.sizes)))
    return rows


async def latency_us(call: Callable[[int], Awaitable[Any]], n: int) -> tuple[float, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


async def latency(n: int) -> list[tuple[str, float, float]]:
    async def direct(x: int) -> list[int]:
        return noop([x])

    rows = [("plain call", *await latency_us(direct, n))]
    rows.append(("asyncio.to_thread", *await latency_us(lambda x: asyncio.to_thread(noop, [x]), n)))
    variants = [("batcher wait 0", 0.0, False), ("batcher wait 5ms", 5.0, False)]
    if HAS_IDLE_KNOB:
        variants.append(("batcher wait 5ms idle", 5.0, True))
    for name, wait_ms, idle in variants:
        b = DynamicBatcher(noop, config(max_wait_ms=wait_ms, dispatch_when_idle=idle))
        b.start()
        rows.append((name, *await latency_us(b.submit, n if wait_ms == 0 else n // 10)))
        await b.close()
    return rows


async def open_loop(rate: float, seconds: float, idle: bool) -> tuple[float, ...]:
    """Poisson arrivals at `rate`/s on a batch costing 2 ms + 0.25 ms per item."""

    def model(items: list[int]) -> list[int]:
        time.sleep(0.002 + 0.00025 * len(items))
        return items

    sizes = SizeRecorder()
    b = DynamicBatcher(
        model,
        config(max_batch_size=16, max_wait_ms=5.0, max_queue=10_000, dispatch_when_idle=idle),
        observer=sizes,
    )
    b.start()
    rng = random.Random(0)
    lat: list[float] = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await b.submit(i)
        lat.append((time.perf_counter() - t0) * 1e3)

    t_start = time.perf_counter()
    tasks, t_next, end = [], t_start, t_start + seconds
    while t_next < end:
        t_next += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
        tasks.append(asyncio.create_task(one(len(tasks))))
    await asyncio.gather(*tasks)
    busy = sizes.compute_s / (time.perf_counter() - t_start)
    await b.close()
    lat.sort()
    p99 = lat[int(0.99 * (len(lat) - 1))]
    return statistics.mean(lat), p99, statistics.mean(sizes.sizes), 100 * busy


async def main(total: int) -> None:
    print(f"## throughput, no-op batch fn, {total} items per level (max_batch 64, wait 0)")
    print(
        f"{'clients':>7} {'batcher it/s':>13} {'to_thread it/s':>15} {'ratio':>6}"
        f" {'batcher cpu us/it':>18} {'to_thread cpu us/it':>20} {'batch':>6}"
    )
    for r in await throughput(total):
        print(
            f"{r.clients:>7} {r.batcher_per_s:>13,.0f} {r.thread_per_s:>15,.0f}"
            f" {r.batcher_per_s / r.thread_per_s:>6.2f} {r.batcher_cpu_us:>18.1f}"
            f" {r.thread_cpu_us:>20.1f} {r.mean_batch:>6.1f}"
        )

    n = max(200, total // 4)
    print(f"\n## latency per item at concurrency 1 ({n} calls; wait 5ms rows: {n // 10})")
    rows = await latency(n)
    base = rows[1][1]
    print(f"{'path':<24} {'median us':>10} {'p99 us':>10} {'x to_thread':>12}")
    for name, med, p99 in rows:
        print(f"{name:<24} {med:>10.1f} {p99:>10.1f} {med / base:>12.2f}")

    if not HAS_IDLE_KNOB:
        return
    print("\n## open loop, batch cost 2 ms + 0.25 ms/item, max_batch 16, max_wait 5 ms")
    print("   (worker busy % = device time spent: what idle-run costs other models sharing it)")
    print(f"{'rate/s':>7} {'mode':<10} {'mean ms':>8} {'p99 ms':>8} {'batch':>6} {'busy %':>7}")
    for rate in (50.0, 400.0, 1000.0, 2000.0):
        for idle in (False, True):
            mean, p99, size, busy = await open_loop(rate, 1.5, idle)
            mode = "idle-run" if idle else "wait"
            print(f"{rate:>7.0f} {mode:<10} {mean:>8.2f} {p99:>8.2f} {size:>6.1f} {busy:>7.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="items per concurrency level")
    asyncio.run(main(parser.parse_args().items))
