"""Overload: does the service shed cleanly at 4x its capacity and come back at once?

One open-loop run of three adjacent phases on one endpoint — baseline at half the
measured capacity, overload at `factor` x capacity, then recovery at half again — so the
recovery phase starts the instant the overload stops. Capacity is the best closed-loop
req/s of the sweep, or measured on the same server just before, after a warm-up, at a
concurrency the service admits whole (32). At 128 connections the closed loop measured
20 req/s where the overload phase then served 65: refused requests come back at once
and re-sent, so the closed loop measures shedding, not capacity.

Checks (issue 8): 503s carry Retry-After; admitted (2xx) requests keep P99 under the
configured deadline (AUDIOSERVE_REQUEST_TIMEOUT_S); no 5xx other than 503/504 and no
dropped connections; recovery — the time from the end of the overload until every later
request is a 2xx under the "normal" latency (2x baseline P99, at least +50 ms) — <= 5 s.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from bench import openloop, prom
from bench.bodies import Endpoint
from bench.load_result import LoadResult
from bench.openloop import Phase, Sample
from bench.server import ServerProcess
from bench.sweep import settle
from bench.wrk_load import run_wrk

RECOVERY_TARGET_S = 5.0


@dataclass(frozen=True)
class OverloadResult:
    endpoint: str
    capacity_rps: float
    factor: float
    deadline_s: float
    baseline: LoadResult
    overload: LoadResult
    recovery: LoadResult
    normal_latency_ms: float
    recovery_s: float  # inf: not back to normal within the recovery phase
    rejections: dict[str, int]
    batch_queues: list[prom.QueueFigures]
    stage_mean_ms: dict[str, float]  # service-side mean per pipeline stage, whole run
    server_time: prom.RouteTime  # the route's time inside the server, whole run

    @property
    def checks(self) -> dict[str, bool]:
        o = self.overload
        return {
            "sheds with 503": o.status.get(503, 0) > 0,
            "every 503 has Retry-After": o.retry_after_503 == o.status.get(503, 0),
            "admitted P99 under the deadline": (not math.isnan(o.p99_ms)
                                                and o.p99_ms <= self.deadline_s * 1000),
            "no 5xx other than 503/504": all(r.server_errors == 0 for r in self._phases()),
            "no dropped connections": all(r.socket_errors == 0 for r in self._phases()),
            f"recovers within {RECOVERY_TARGET_S:g} s": self.recovery_s <= RECOVERY_TARGET_S,
        }

    def _phases(self) -> tuple[LoadResult, ...]:
        return (self.baseline, self.overload, self.recovery)


def recovery_seconds(samples: list[Sample], overload_end_s: float, normal_ms: float) -> float:
    """Earliest offset after the overload from which every request is a fast 2xx."""
    recovery = sorted((s for s in samples if s.phase == "recovery"), key=lambda s: s.scheduled_s)
    if not recovery:
        return math.inf
    bad = [s for s in recovery if not (200 <= s.status < 300 and s.latency_s * 1000 <= normal_ms)]
    if not bad:
        return max(0.0, recovery[0].scheduled_s - overload_end_s)
    last_bad = bad[-1]
    later = [s for s in recovery if s.scheduled_s > last_bad.scheduled_s]
    if not later:
        return math.inf
    return later[0].scheduled_s - overload_end_s


def run_overload(server: ServerProcess, ep: Endpoint, *, deadline_s: float, factor: float = 4.0,
                 capacity_concurrency: int = 32, capacity_seconds: float = 10.0,
                 phase_seconds: tuple[float, float, float] = (10.0, 15.0, 15.0),
                 client_timeout_s: float = 60.0, known_capacity: float = 0.0) -> OverloadResult:
    """Run on a started server; returns the figures (the caller stops the server).
    Capacity: the closed-loop measurement here, or `known_capacity` (the best req/s of
    the sweep) when that is higher — a short closed-loop run underestimates it."""
    run_wrk(server.url, ep.folder, ep.name, capacity_concurrency, capacity_seconds / 2)
    settle(server)  # the warm-up above: caches, first-shape allocations, the admission rate
    capacity = max(known_capacity, run_wrk(server.url, ep.folder, ep.name,
                                           capacity_concurrency, capacity_seconds).ok_rps)
    if capacity <= 0:
        raise RuntimeError(f"capacity measurement on {ep.name} gave no successful request")
    settle(server)
    base_s, over_s, rec_s = phase_seconds
    phases = [Phase("baseline", capacity / 2, base_s), Phase("overload", capacity * factor, over_s),
              Phase("recovery", capacity / 2, rec_s)]
    before = server.metrics_text()
    samples = asyncio.run(openloop.run_phases(server.url, [ep], phases, poisson=True,
                                              timeout_s=client_timeout_s, check=True))
    d = prom.delta(prom.snapshot(before), prom.snapshot(server.metrics_text()))
    rejections: dict[str, int] = {}
    for (metric, labels), value in d.items():
        if metric == "audioserve_rejections_total" and value:
            lab = dict(labels)
            key = f"{lab.get('queue')}:{lab.get('reason')}"
            rejections[key] = round(value)
    results = {p.name: openloop.summarise(samples, ep.name, p.rate, p.seconds, p.name)
               for p in phases}
    base_p99 = results["baseline"].p99_ms
    normal = max(2 * base_p99, base_p99 + 50) if not math.isnan(base_p99) else math.inf
    return OverloadResult(
        endpoint=ep.name, capacity_rps=capacity, factor=factor, deadline_s=deadline_s,
        baseline=results["baseline"], overload=results["overload"],
        recovery=results["recovery"], normal_latency_ms=normal,
        recovery_s=recovery_seconds(samples, base_s + over_s, normal),
        rejections=rejections, batch_queues=[prom.queue_figures(d, q) for q in prom.queues(d)],
        stage_mean_ms=stage_means(d), server_time=prom.route_time(d, ep.path),
    )


def stage_means(d: dict[prom.Key, float]) -> dict[str, float]:
    """Mean ms per `audioserve_stage_seconds` stage: where the time went (decode and
    features run before the batcher, so its deadline does not cover them)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for (metric, labels), value in d.items():
        lab = dict(labels)
        key = f"{lab.get('model')}.{lab.get('stage')}"
        if metric == "audioserve_stage_seconds_sum":
            sums[key] = value
        elif metric == "audioserve_stage_seconds_count":
            counts[key] = value
    return {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}
