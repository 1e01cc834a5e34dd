"""Open-loop load: requests sent on a fixed schedule whatever the server does (wrk2-style).

Design note. A closed-loop client (wrk) waits for an answer before sending again, so when
the server stalls the client stops sending and the stall is counted once instead of for
every request that should have been sent meanwhile (coordinated omission). Here every
request has a SCHEDULED send time from the arrival process (fixed interval or Poisson) and
its latency is measured from that time, not from when the client got round to sending it;
a request the client could not even start on time is charged for its lateness. The load
is a list of phases (name, rate, seconds) so one run can do baseline -> overload ->
recovery without a gap. 503 and 504 are counted apart from successes, and their
latencies are kept out of the success percentiles.

Bounded: at most sum(rate * seconds) requests, each with a client timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass

from bench.bodies import Endpoint
from bench.load_result import LoadResult


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # requests/s
    seconds: float


@dataclass(frozen=True)
class Sample:
    """One request: scheduled offset from the run's start, latency from that time."""

    phase: str
    endpoint: str
    scheduled_s: float
    latency_s: float
    status: int  # 0: no HTTP answer (connection error or client timeout)
    retry_after: bool
    valid: bool  # a 2xx whose body has the expected shape (see `validate`)


def arrivals(phases: list[Phase], poisson: bool, seed: int) -> list[tuple[str, float]]:
    """(phase, offset seconds) for every request of the run."""
    rng = random.Random(seed)
    out: list[tuple[str, float]] = []
    start = 0.0
    for phase in phases:
        t = start
        end = start + phase.seconds
        if phase.rate > 0:
            while True:
                t += rng.expovariate(phase.rate) if poisson else 1.0 / phase.rate
                if t >= end:
                    break
                out.append((phase.name, t))
        start = end
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def validate(endpoint: str, answer: Answer) -> bool:
    """Correctness under load: the body of a 2xx has the fields its endpoint promises."""
    if not 200 <= answer.status < 300:
        return False
    if endpoint == "tts":
        return answer.headers.get("content-type", "").startswith("audio/") and (
            len(answer.body) > 44)
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    if endpoint == "classify":
        labels = body.get("labels")
        return bool(labels) and all({"label", "probability"} <= set(x) for x in labels)
    if endpoint == "emotion":
        return bool(body.get("scores")) and "emotion" in body
    return True


def request_bytes(host: str, ep: Endpoint, body: bytes) -> bytes:
    """One whole HTTP/1.1 request, built once per body: sending it costs a socket write."""
    head = (f"POST {ep.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ep.content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """A response's status and headers (names lowercased) from its head, without the
    blank line that ends it."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def parse_answer(raw: bytes) -> Answer:
    """The status, headers and body of a response read to EOF (chunked bodies joined)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(chunks)
    return Answer(status, headers, body)


async def _one(address: tuple[str, int], ep: Endpoint, request: bytes, phase: str,
               scheduled: float, t0: float, check: bool, timeout_s: float) -> Sample:
    """One request on its own connection. A lean client on purpose: at 4x the service's
    capacity on a 2-core machine, an HTTP library's per-request CPU took the server's
    cores and its backlog made every latency the client's (httpx fell minutes behind)."""
    delay = t0 + scheduled - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    status, retry_after, valid = 0, False, False
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(request)
            await writer.drain()
            answer = parse_answer(await reader.read(-1))
        status = answer.status
        retry_after = "retry-after" in answer.headers
        valid = validate(ep.name, answer) if check else 200 <= status < 300
    except (OSError, TimeoutError, ValueError, IndexError):
        pass
    finally:
        if writer is not None:
            writer.close()
    return Sample(phase, ep.name, scheduled, time.perf_counter() - (t0 + scheduled), status,
                  retry_after, valid)


async def run_phases(url: str, endpoints: list[Endpoint], phases: list[Phase], *,
                     poisson: bool = True, seed: int = 0, timeout_s: float = 60.0,
                     check: bool = False) -> list[Sample]:
    """Send every scheduled request (round robin over endpoints and their bodies)."""
    if not url.startswith("http://127.0.0.1"):
        raise ValueError("the bench loads loopback only")
    host = url.removeprefix("http://").rstrip("/")
    name, _, port = host.partition(":")
    address = (name, int(port or 80))
    schedule = arrivals(phases, poisson, seed)
    requests = [(ep, request_bytes(host, ep, body)) for ep in endpoints
                for body in ep.read_bodies()]
    rng = random.Random(seed + 1)
    t0 = time.perf_counter() + 0.05
    tasks = []
    for phase, offset in schedule:
        ep, request = requests[rng.randrange(len(requests))]
        tasks.append(asyncio.create_task(
            _one(address, ep, request, phase, offset, t0, check, timeout_s)))
    return list(await asyncio.gather(*tasks))


def summarise(samples: list[Sample], endpoint: str, rate: float, seconds: float,
              phase: str | None = None) -> LoadResult:
    chosen = [s for s in samples if phase is None or s.phase == phase]
    status: dict[int, int] = {}
    for s in chosen:
        status[s.status] = status.get(s.status, 0) + 1
    ok = [s.latency_s * 1000 for s in chosen if 200 <= s.status < 300]
    shed = [s.latency_s * 1000 for s in chosen if s.status in (503, 504)]
    return LoadResult(
        endpoint=endpoint, mode="open", concurrency=0, rate=rate, duration_s=seconds,
        requests=len(chosen), status=status, p50_ms=percentile(ok, 50),
        p90_ms=percentile(ok, 90), p99_ms=percentile(ok, 99), max_ms=max(ok, default=math.nan),
        retry_after_503=sum(1 for s in chosen if s.status == 503 and s.retry_after),
        socket_errors=status.get(0, 0),
        extra={"shed_p99_ms": percentile(shed, 99),
               "invalid_2xx": float(sum(1 for s in chosen if 200 <= s.status < 300
                                        and not s.valid))},
    )


def run_fixed_rate(url: str, endpoint: Endpoint, rate: float, seconds: float, *,
                   poisson: bool = True, seed: int = 0, timeout_s: float = 60.0) -> LoadResult:
    phases = [Phase("main", rate, seconds)]
    samples = asyncio.run(run_phases(url, [endpoint], phases, poisson=poisson, seed=seed,
                                     timeout_s=timeout_s, check=True))
    return summarise(samples, endpoint.name, rate, seconds)
