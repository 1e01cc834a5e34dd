"""A guard for hostile-input tests and benchmarks: samples `GET /healthz` while a hostile
request runs and fails if any answer took longer than the limit (100 ms): proof that the
request did not stall the event loop, whatever status it finally got.

    with healthz_guard(server.url) as guard:
        ...send the hostile request...
    # on exit: AssertionError if any /healthz took > 100 ms (guard.worst_s says how long)
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

LIMIT_S = 0.1
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
def healthz_guard(url: str, limit_s: float = LIMIT_S, interval_s: float = INTERVAL_S,
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
