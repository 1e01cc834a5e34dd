"""One server configuration measured: a closed-loop concurrency sweep per endpoint (wrk),
then an open-loop fixed-rate run at a fraction of the best throughput the sweep found,
with the server's own batch figures for every point (metrics after - before)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import openloop, prom
from bench.bodies import Endpoint
from bench.load_result import LoadResult
from bench.server import ServerProcess, cpu_used_by_role, http_get
from bench.wrk_load import run_wrk


@dataclass(frozen=True)
class Point:
    load: LoadResult
    queues: list[prom.QueueFigures] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds the server's processes used during the point, by role (bench/server)."""


@dataclass(frozen=True)
class ConfigResult:
    key: str  # "on", "off", "litserve", "rayserve"
    title: str
    settings: dict[str, str]
    sweep: list[Point]
    open_loop: list[Point]
    rss_after_warmup_mb: float
    peak_rss_mb: float
    error: str | None = None
    models: dict[str, object] = field(default_factory=dict)
    """GET /v1/models after the warm-up: what ran, and its measured per-batch costs."""

    def points(self, endpoint: str) -> list[Point]:
        return [p for p in self.sweep if p.load.endpoint == endpoint]

    def at(self, endpoint: str, concurrency: int) -> Point | None:
        return next((p for p in self.points(endpoint) if p.load.concurrency == concurrency),
                    None)


@dataclass(frozen=True)
class SweepPlan:
    concurrency: list[int]
    duration_s: float
    open_fraction: float = 0.7  # open-loop rate as a share of the best closed-loop req/s
    open_seconds: float = 10.0
    warmup_s: float = 2.0


Log = Callable[[str], None]


def settle(server: ServerProcess, timeout_s: float = 30.0) -> None:
    """Wait for the work a finished load left behind: wrk closes its connections at the
    end of a point, but the requests in flight still run, and would be charged to the
    next point. audioserve: until every batcher queue is empty twice in a row; peers
    (no /metrics): a fixed pause."""
    text = server.metrics_text()
    if "audioserve_queue_depth" not in text:
        time.sleep(2.0)
        return
    deadline, calm = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline and calm < 2:
        depth = sum(v for (m, _), v in prom.snapshot(text).items() if m == "audioserve_queue_depth")
        calm = calm + 1 if depth == 0 else 0
        time.sleep(0.25)
        text = server.metrics_text()
    time.sleep(0.5)  # the last batch's post-processing


def measure_point(server: ServerProcess, ep: Endpoint, run: Callable[[], LoadResult]) -> Point:
    settle(server)
    before, cpu = server.metrics_text(), server.cpu_seconds()
    load = run()
    used = cpu_used_by_role(cpu, server.cpu_seconds())
    return Point(load, prom.all_queue_figures(before, server.metrics_text()), used)


def best_ok_rps(points: list[Point]) -> float:
    return max((p.load.ok_rps for p in points), default=0.0)


def run_config(key: str, title: str, settings: dict[str, str], server: ServerProcess,
               endpoints: dict[str, Endpoint], plan: SweepPlan, log: Log) -> ConfigResult:
    """Start `server`, measure every endpoint, stop it; a failure is reported, not raised."""
    sweep: list[Point] = []
    open_points: list[Point] = []
    rss_warm = peak = math.nan
    models: dict[str, object] = {}
    try:
        server.start()
        for name, ep in endpoints.items():
            run_wrk(server.url, ep.folder, name, min(8, max(plan.concurrency)), plan.warmup_s)
        rss_warm = server.rss_mb()
        models = _models(server)
        for name, ep in endpoints.items():
            points = []
            for c in plan.concurrency:
                point = measure_point(server, ep, lambda ep=ep, c=c: run_wrk(
                    server.url, ep.folder, ep.name, c, plan.duration_s))
                log(f"  {key:>8} {name:<8} c={c:<4} {point.load.ok_rps:8.2f} ok req/s  "
                    f"p50 {point.load.p50_ms:8.1f} ms  p99 {point.load.p99_ms:8.1f} ms  "
                    f"non-2xx {point.load.non_2xx() or '-'}")
                points.append(point)
            sweep.extend(points)
            rate = plan.open_fraction * best_ok_rps(points)
            if rate > 0 and plan.open_seconds > 0:
                point = measure_point(server, ep, lambda ep=ep, rate=rate: openloop.run_fixed_rate(
                    server.url, ep, rate, plan.open_seconds))
                log(f"  {key:>8} {name:<8} open {rate:6.2f}/s  ok {point.load.ok_rps:7.2f}/s  "
                    f"p50 {point.load.p50_ms:8.1f} ms  p99 {point.load.p99_ms:8.1f} ms  "
                    f"non-2xx {point.load.non_2xx() or '-'}")
                open_points.append(point)
        peak = server.peak_rss_mb()
    except Exception as exc:  # one broken configuration must not lose the others' figures
        log(f"  {key}: FAILED: {exc}")
        return ConfigResult(key, title, settings, sweep, open_points, rss_warm, peak,
                            error=f"{type(exc).__name__}: {exc}", models=models)
    finally:
        server.stop()
    return ConfigResult(key, title, settings, sweep, open_points, rss_warm, peak,
                        models=models)


def _models(server: ServerProcess) -> dict[str, object]:
    status, body = http_get(server.url + "/v1/models")
    return json.loads(body) if status == 200 else {}
