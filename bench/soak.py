"""Soak: mixed open-loop traffic on every endpoint for minutes, watching memory and errors.

The rate is `load` x the mixed capacity (each endpoint's closed-loop req/s at concurrency
8, combined for an even mix), so the service is busy but not overloaded: any 503/504 is
counted as shedding, anything else that is not a valid 2xx as an error. RSS (process
tree) is sampled every few seconds; growth is end minus start, both read with the server
idle (queues drained), start after a warm-up of the same mixed traffic: the service's
working set for this mix (decoders, pools, each graph's arena at the usual shapes) is
reached in the first minute, and reading the start before that, or the end while requests
are still in flight, measured that working set instead of growth.
Target (issue 8): growth <= 50 MB, zero errors other than intended shedding.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from bench import openloop
from bench.bodies import Endpoint
from bench.openloop import Phase
from bench.server import ServerProcess
from bench.sweep import settle
from bench.wrk_load import run_wrk

RSS_GROWTH_TARGET_MB = 50.0


@dataclass(frozen=True)
class SoakResult:
    minutes: float
    rate: float
    endpoints: list[str]
    requests: int
    ok: int
    shed: int
    errors: int
    error_statuses: dict[int, int]
    invalid_2xx: int
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    rss_timeline: list[tuple[float, float]]  # (seconds, MB)
    p50_ms: dict[str, float]
    p99_ms: dict[str, float]

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    @property
    def checks(self) -> dict[str, bool]:
        return {f"RSS growth <= {RSS_GROWTH_TARGET_MB:g} MB":
                self.rss_growth_mb <= RSS_GROWTH_TARGET_MB,
                "zero errors other than shedding": self.errors == 0}


class RssSampler(threading.Thread):
    def __init__(self, server: ServerProcess, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.server, self.every_s = server, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - self._t0, self.server.rss_mb()))
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def mixed_rate(server: ServerProcess, endpoints: list[Endpoint], load: float,
               seconds: float) -> float:
    caps = [run_wrk(server.url, ep.folder, ep.name, 8, seconds).ok_rps for ep in endpoints]
    if min(caps) <= 0:
        raise RuntimeError(f"no successful request while measuring capacity: {caps}")
    return load * len(caps) / sum(1 / c for c in caps)


def run_soak(server: ServerProcess, endpoints: list[Endpoint], minutes: float, *,
             load: float = 0.5, capacity_seconds: float = 5.0,
             warmup_minutes: float = 1.0) -> SoakResult:
    """On a started server: capacity, warm-up, RSS start, soak, RSS end."""
    rate = mixed_rate(server, endpoints, load, capacity_seconds)
    asyncio.run(openloop.run_phases(server.url, endpoints,
                                    [Phase("warm-up", rate, warmup_minutes * 60)],
                                    poisson=True, check=True))
    settle(server)
    rss_start = server.rss_mb()
    sampler = RssSampler(server)
    sampler.start()
    seconds = minutes * 60
    try:
        samples = asyncio.run(openloop.run_phases(
            server.url, endpoints, [Phase("soak", rate, seconds)], poisson=True, check=True))
    finally:
        sampler.stop()
    settle(server)
    rss_end = server.rss_mb()
    status: dict[int, int] = {}
    for s in samples:
        status[s.status] = status.get(s.status, 0) + 1
    ok = sum(1 for s in samples if s.valid)
    invalid = sum(1 for s in samples if 200 <= s.status < 300 and not s.valid)
    shed = status.get(503, 0) + status.get(504, 0)
    errors = {k: v for k, v in status.items() if not 200 <= k < 300 and k not in (503, 504)}
    p50, p99 = {}, {}
    for ep in endpoints:
        lat = [s.latency_s * 1000 for s in samples if s.endpoint == ep.name and s.valid]
        p50[ep.name], p99[ep.name] = openloop.percentile(lat, 50), openloop.percentile(lat, 99)
    timeline = [*sampler.samples, (seconds, rss_end)]
    return SoakResult(
        minutes=minutes, rate=rate, endpoints=[ep.name for ep in endpoints],
        requests=len(samples), ok=ok, shed=shed, errors=sum(errors.values()) + invalid,
        error_statuses=errors, invalid_2xx=invalid, rss_start_mb=rss_start,
        rss_end_mb=rss_end, rss_peak_mb=server.peak_rss_mb(), rss_timeline=timeline,
        p50_ms=p50, p99_ms=p99,
    )
