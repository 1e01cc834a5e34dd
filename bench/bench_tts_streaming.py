"""Streaming TTS over HTTP: time to first audio and aggregate real-time factor.

The server runs as its own process (`python -m service`, bench/server.py). C clients
(1, 8, 32) each open a streaming `POST /tts` (PCM) at the same moment, `--rounds` times;
per request we record the time to the first audio byte (TTFA) and the whole response.
Side by side in the same run: the same load with `stream: false`, whose "first audio" is
the whole response. Aggregate real-time factor = wall seconds / audio seconds produced by
all clients (< 1: faster than real time); x real time is its inverse.

Random weights rarely stop by themselves, so every request has the same token budget
(`--tokens`, default 150 = 3.2 s of audio) and texts of mixed lengths.

Seams: with `--seams`, one server per lookahead (1, 4 tokens and the exact default) and
one client: TTFA and the largest difference between the streamed and one-shot PCM.

Run from the repository root:
    .venv/bin/python -m bench.bench_tts_streaming [--quick] [--random-real] [--seams]
The tiny pack is built into a temp folder unless --models-dir has one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.packs import ensure_pack
from bench.server import ServerProcess, audioserve

TEXTS = ("Hello there.", "The quick brown fox jumps over the lazy dog.",
         "Seven small birds sing in the early morning light, near the river.",
         "A short one.")
RATE = 24000


@dataclass(frozen=True)
class Sample:
    ttfa_s: float
    total_s: float
    audio_s: float


@dataclass(frozen=True)
class Row:
    mode: str
    clients: int
    requests: int
    ttfa_p50: float
    ttfa_p99: float
    total_p50: float
    audio_s: float
    wall_s: float

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else float("inf")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, object]
                      ) -> tuple[Sample, bytes]:
    start = time.perf_counter()
    first = None
    data = bytearray()
    async with client.stream("POST", url + "/tts", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter() - start
            data += chunk
    total = time.perf_counter() - start
    return Sample(first or total, total, len(data) / 2 / RATE), bytes(data)


async def load(url: str, clients: int, rounds: int, tokens: int, stream: bool) -> Row:
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(c: int) -> None:
            for r in range(rounds):
                body = {"text": TEXTS[(c + r) % len(TEXTS)], "seed": c, "sampling_seed": r,
                        "max_new_tokens": tokens, "format": "pcm", "stream": stream}
                sample, _ = await one_request(client, url, body)
                samples.append(sample)

        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - started
    return Row("stream" if stream else "one-shot", clients, len(samples),
               pct([s.ttfa_s for s in samples], 50), pct([s.ttfa_s for s in samples], 99),
               pct([s.total_s for s in samples], 50), sum(s.audio_s for s in samples), wall)


def print_rows(rows: list[Row]) -> None:
    print(f"{'mode':9s} {'clients':>7s} {'reqs':>5s} {'TTFA P50 ms':>12s} "
          f"{'TTFA P99 ms':>12s} {'total P50 ms':>13s} {'audio s':>8s} {'RTF':>6s} "
          f"{'x realtime':>10s}")
    for r in rows:
        print(f"{r.mode:9s} {r.clients:7d} {r.requests:5d} {1000 * r.ttfa_p50:12.1f} "
              f"{1000 * r.ttfa_p99:12.1f} {1000 * r.total_p50:13.1f} {r.audio_s:8.1f} "
              f"{r.rtf:6.3f} {1 / r.rtf:10.2f}")


def pairs(rows: list[Row]) -> None:
    by = {(r.mode, r.clients): r for r in rows}
    for clients in sorted({r.clients for r in rows}):
        s, o = by.get(("stream", clients)), by.get(("one-shot", clients))
        if s and o:
            print(f"  {clients:2d} clients: TTFA P50 one-shot/stream = "
                  f"{o.ttfa_p50 / s.ttfa_p50:5.1f}x, RTF stream/one-shot = {s.rtf / o.rtf:4.2f}")


def server_for(models_dir: Path, log_dir: Path, name: str, **settings: object) -> ServerProcess:
    base = {"models": "chattts", "intra_op_threads": 1, "tts_max_active": 32,
            "max_queue": 1024, "request_timeout_s": 600}
    base.update(settings)
    return audioserve(name, models_dir, {k: str(v) for k, v in base.items()},
                      log_dir=log_dir)


async def seams(models_dir: Path, log_dir: Path, tokens: int) -> None:
    print("\nseams: streamed vs one-shot PCM, 1 client (chunk 24 tokens)")
    print(f"{'lookahead':>9s} {'TTFA ms':>8s} {'max |diff|':>11s}")
    for lookahead in (1, 4, None):
        extra = {} if lookahead is None else {"tts_stream_lookahead_tokens": lookahead}
        with server_for(models_dir, log_dir, f"seams_{lookahead}", **extra).start() as server:
            async with httpx.AsyncClient(timeout=600) as client:
                body = {"text": TEXTS[2], "seed": 1, "sampling_seed": 1,
                        "max_new_tokens": tokens, "format": "pcm"}
                ttfas, diff = [], 0.0
                for _ in range(3):
                    sample, streamed = await one_request(client, server.url,
                                                         {**body, "stream": True})
                    _, whole = await one_request(client, server.url, body)
                    a = np.frombuffer(streamed, "<i2").astype(np.float32) / 32767
                    b = np.frombuffer(whole, "<i2").astype(np.float32) / 32767
                    diff = max(diff, float(np.max(np.abs(a - b))) if len(a) == len(b)
                               else float("inf"))
                    ttfas.append(sample.ttfa_s)
        label = "exact" if lookahead is None else str(lookahead)
        print(f"{label:>9s} {1000 * statistics.median(ttfas):8.1f} {diff:11.2e}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--random-real", action="store_true",
                        help="random weights at the real size (slower than real time on CPU)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--seams", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 and 8 clients")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clients = 1, "1,8"
    if args.random_real and args.clients == "1,8,32":  # ~0.2 s per decode step on CPU
        args.clients, args.rounds, args.tokens = "1,4", 1, min(args.tokens, 120)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tts_stream_"))
    models_dir = args.models_dir or tmp / "models"
    status = ensure_pack("chattts", models_dir, random_real=args.random_real,
                         log_dir=tmp / "logs")
    if not status.ready:
        raise SystemExit(f"no ChatTTS pack: {status.note}")
    print(f"pack: {status.path} ({status.note}); tokens/request {args.tokens} "
          f"({args.tokens * 512 / RATE:.1f} s audio), rounds {args.rounds}")
    rows: list[Row] = []
    with server_for(models_dir, tmp / "logs", "audioserve").start(600) as server:
        await load(server.url, 1, 1, 8, True)  # warm the connection and graphs
        for clients in (int(c) for c in args.clients.split(",")):
            for stream in (True, False):
                rows.append(await load(server.url, clients, args.rounds, args.tokens, stream))
    print_rows(rows)
    pairs(rows)
    if args.seams:
        await seams(models_dir, tmp / "logs", args.tokens)


if __name__ == "__main__":
    asyncio.run(main())
