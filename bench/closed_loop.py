"""A closed-loop load generator in Python, for machines without wrk (the GPU check's has
no package registry): `concurrency` keep-alive connections, each sending its next prebuilt
request when the last answer is in, spread over worker processes so the client's own CPU
is not the limit. Same bodies folder and same `LoadResult` as `bench/wrk_load.run_wrk`.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load_result import LoadResult
from bench.openloop import parse_head, percentile


def _requests(host: str, bodies_dir: Path) -> list[bytes]:
    path = (bodies_dir / "path").read_text().strip()
    ctype = (bodies_dir / "content_type").read_text().strip()
    names = (bodies_dir / "index").read_text().split()
    out = []
    for name in names:
        body = (bodies_dir / name).read_bytes()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        out.append(head.encode("latin-1") + body)
    return out


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response (Content-Length or chunked); (status, has Retry-After)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers = parse_head(head[:-4])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, "retry-after" in headers


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    status: dict[int, int] = field(default_factory=dict)
    retry_after_503: int = 0
    socket_errors: int = 0

    def merge(self, other: _Tally) -> None:
        self.latencies_ms += other.latencies_ms
        for code, n in other.status.items():
            self.status[code] = self.status.get(code, 0) + n
        self.retry_after_503 += other.retry_after_503
        self.socket_errors += other.socket_errors


async def _connection(address: tuple[str, int], requests: list[bytes], start: int,
                      deadline: float, timeout_s: float, tally: _Tally) -> None:
    n = start
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection(*address)
                writer.write(requests[n % len(requests)])
                await writer.drain()
                code, retry = await _answer(reader)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            tally.socket_errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        n += 1
        tally.status[code] = tally.status.get(code, 0) + 1
        if 200 <= code < 300:
            tally.latencies_ms.append((time.perf_counter() - t0) * 1000)
        elif code == 503 and retry:
            tally.retry_after_503 += 1
    if writer is not None:
        writer.close()


def _worker(args: tuple[str, int, str, int, int, float, float]) -> _Tally:
    host, port, bodies, first, connections, duration_s, timeout_s = args
    requests = _requests(f"{host}:{port}", Path(bodies))
    tallies = [_Tally() for _ in range(connections)]

    async def main() -> None:
        deadline = time.perf_counter() + duration_s
        await asyncio.gather(*(_connection((host, port), requests, first + i, deadline,
                                           timeout_s, tallies[i]) for i in range(connections)))

    asyncio.run(main())
    total = _Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def run_closed(url: str, bodies_dir: Path, endpoint: str, concurrency: int,
               duration_s: float, *, timeout_s: float = 60.0,
               processes: int | None = None) -> LoadResult:
    """One closed-loop point, as wrk would measure it."""
    if not url.startswith("http://127.0.0.1"):
        raise ValueError("the bench loads loopback only")
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    procs = processes or max(1, min(concurrency, (os.cpu_count() or 2) // 4, 8))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    jobs, first = [], 0
    for share in shares:
        if share:
            jobs.append((host, int(port), str(bodies_dir), first, share, duration_s, timeout_s))
            first += share
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        outcomes = pool.map(_worker, jobs)
    elapsed = time.perf_counter() - started
    total = _Tally()
    for tally in outcomes:
        total.merge(tally)
    latencies, status = total.latencies_ms, total.status
    retry, errors = total.retry_after_503, total.socket_errors
    nan = math.nan
    return LoadResult(
        endpoint=endpoint, mode="closed", concurrency=concurrency, rate=0.0,
        duration_s=min(duration_s, elapsed), requests=sum(status.values()), status=status,
        p50_ms=percentile(latencies, 50) if latencies else nan,
        p90_ms=percentile(latencies, 90) if latencies else nan,
        p99_ms=percentile(latencies, 99) if latencies else nan,
        max_ms=max(latencies, default=nan), retry_after_503=retry, socket_errors=errors,
        extra={"client": 1.0},
    )
