"""A guard for hostile-input tests and benchmarks: samples `GET /healthz` while a hostile
request runs, proof that the request did not stall the event loop, whatever status it
finally got.

    with healthz_guard(server.url) as guard:
        ...send the hostile request...
    # on exit: AssertionError if a /healthz failed or took longer than `limit_s`

Two bounds, two uses. TARGET_S (100 ms) is the issue's target for /healthz under hostile
input: benchmarks (bench_hostile) measure `guard.worst_s` and report it against the target.
HANG_S (2 s), the default `limit_s`, is what tests assert: a loop that answers nothing for
2 s is stuck, not slow (20x the target; the worst seen in the hostile tests on this 2-core
machine at load average 10 was 0.12 s), so a test's outcome does not depend on how busy
or fast the machine is.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

TARGET_S = 0.1
HANG_S = 2.0
INTERVAL_S = 0.02


@dataclass
class GuardReport:
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst_s(self) -> float:
        return max(self.samples, default=0.0)


def _sample(conn: http.client.HTTPConnection, timeout_s: float) -> float:
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or b"ok" not in body:
        raise AssertionError(f"/healthz answered {response.status}: {body[:200]!r}")
    return elapsed


@contextmanager
def healthz_guard(url: str, limit_s: float = HANG_S, interval_s: float = INTERVAL_S,
                  check: bool = True) -> Iterator[GuardReport]:
    """Sample /healthz on its own keep-alive connection every `interval_s` until the block
    ends; with `check`, fail if any sample took longer than `limit_s` or failed."""
    parts = urllib.parse.urlsplit(url)
    report = GuardReport()
    stop = threading.Event()

    def run() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            while not stop.is_set():
                try:
                    report.samples.append(_sample(conn, limit_s))
                except (OSError, http.client.HTTPException) as exc:
                    # a closed keep-alive connection: reconnect, and count the miss
                    report.failures.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                except AssertionError as exc:
                    report.failures.append(str(exc))
                stop.wait(interval_s)
        finally:
            conn.close()

    thread = threading.Thread(target=run, name="healthz-guard", daemon=True)
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join(timeout=60)
    if check:
        assert report.samples, "the guard took no /healthz sample"
        assert not report.failures, f"/healthz failed during the request: {report.failures}"
        assert report.worst_s <= limit_s, (
            f"/healthz took {report.worst_s * 1e3:.0f} ms during the request "
            f"(limit {limit_s * 1e3:.0f} ms): the event loop stalled")
