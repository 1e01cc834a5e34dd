"""Admission control and request deadlines, applied before any work is done.

Design note. Under overload the expensive part of a request is not the batched forward
pass but everything queued before it: decoding and features in worker threads. A gate per
model therefore admits a request only while (a) fewer than `max_in_flight` requests of
that model are in flight and (b) the wait predicted from the recent completion rate
(in-flight / completions per busy second) fits in `wait_fraction` of the deadline; otherwise it
answers at once with `Overloaded` (503 + Retry-After) instead of letting the request pile
up and fail late. The fraction leaves headroom for the estimate's error and for the work
itself, and bounds the backlog left to drain when a burst ends (recovery time). The rate
counts only time with work in flight (both sums decay with a 10 s time constant): idle
time must not make a fresh request look slow to serve.

An admitted request carries one deadline, set when it was admitted, in a context variable
(asyncio tasks and `run_in_executor` with a copied context inherit it). Every later queue
honours it: `CpuWorkers.run` refuses to start work past it and batchers get it through
`submit(..., deadline=request_deadline())`. Work already running is never interrupted.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from batcher import DeadlineExceeded, Overloaded
from service.runtime.metrics import Metrics

T = TypeVar("T")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "audioserve_request_deadline", default=None
)

_RATE_TIME_CONSTANT_S = 10.0


def request_deadline() -> float | None:
    """The current request's deadline (`time.monotonic()`), or None outside a request."""
    return _deadline.get()


def adopt_deadline(deadline: float | None) -> None:
    """Make `deadline` the current context's request deadline: a call that arrived from
    another process with its request's time left (`service.cluster`)."""
    _deadline.set(deadline)


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Set the request's deadline for the block only: what must START in time (TTS
    preparation) runs inside it, work after the start (generation, encoding) outside."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class AdmissionGate:
    """Bounded, deadline-aware admission for one model (see the design note)."""

    def __init__(
        self,
        name: str,
        *,
        max_in_flight: int,
        timeout_s: float,
        wait_fraction: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_predicted_wait_s = wait_fraction * timeout_s
        self.in_flight = 0
        self._metrics = metrics
        self._mean_latency_s = 1.0
        self._last_event = time.monotonic()
        self._busy_s = 0.0
        self._done = 0.0

    def _advance(self, now: float) -> None:
        """Decay both sums to `now`, adding the busy time since the last event."""
        elapsed = max(0.0, now - self._last_event)
        decay = math.exp(-elapsed / _RATE_TIME_CONSTANT_S)
        self._busy_s = self._busy_s * decay + (elapsed if self.in_flight > 0 else 0.0)
        self._done *= decay
        self._last_event = now

    def completion_rate(self, now: float) -> float | None:
        """Requests finished per busy second, recently (None: too little data yet)."""
        self._advance(now)
        if self._done < 2.0 or self._busy_s <= 1e-3:
            return None
        return self._done / self._busy_s

    def predicted_wait_s(self, now: float) -> float | None:
        rate = self.completion_rate(now)
        return None if rate is None else self.in_flight / rate

    def _refuse(self, why: str, reason: str) -> Overloaded:
        if self._metrics is not None:
            self._metrics.rejections.labels(f"{self.name}_admission", reason).inc()
        retry_after = max(1.0, math.ceil(self._mean_latency_s))
        return Overloaded(f"{self.name} is overloaded: {why}; retry later", retry_after)

    def check(self, now: float) -> None:
        """Raise Overloaded when a request arriving now would be refused."""
        if self.in_flight >= self.max_in_flight:
            raise self._refuse(f"{self.in_flight} requests in flight", "in_flight_full")
        wait = self.predicted_wait_s(now)
        if wait is not None and self.in_flight > 0 and wait > self.max_predicted_wait_s:
            raise self._refuse(
                f"predicted wait {wait:.1f} s; admitting up to {self.max_predicted_wait_s:.1f} s "
                f"of a {self.timeout_s:g} s deadline",
                "predicted_wait",
            )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[float]:
        """Hold one in-flight slot for the block; yields the request's deadline."""
        now = time.monotonic()
        self.check(now)
        deadline = now + self.timeout_s
        token = _deadline.set(deadline)
        self._advance(now)
        self._set_in_flight(self.in_flight + 1)
        try:
            yield deadline
        finally:
            _deadline.reset(token)
            done = time.monotonic()
            self._advance(done)
            self._done += 1.0
            self._set_in_flight(self.in_flight - 1)
            self._mean_latency_s = 0.8 * self._mean_latency_s + 0.2 * (done - now)

    def _set_in_flight(self, value: int) -> None:
        self.in_flight = value
        if self._metrics is not None:
            self._metrics.in_flight.labels(self.name).set(value)


class CpuWorkers:
    """One bounded thread pool for CPU-side request work (decode, features, encode).

    Bounded so that under load requests wait here in order instead of oversubscribing
    the cores, and deadline-aware so that work whose request has expired never starts.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or max(2, os.cpu_count() or 2)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="audioserve-cpu")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        deadline = request_deadline()

        def guarded() -> T:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed before its work started")
            return fn(*args)

        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, context.run, guarded)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
