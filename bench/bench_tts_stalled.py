"""Streaming TTS clients that never read, and a legitimate `/tts` beside them (issue 13, 6).

The server runs as its own process (`python -m service`, bench/server.py) on the tiny
pack. N clients (default 12) each send a streaming `POST /tts` (48 kHz PCM of a long,
many-piece text: several MB, more than the kernel's socket buffers hold) and then never
read. Meanwhile a client sends short one-shot `/tts` requests one after another; the same
client on the quiet server, in the same run, is the baseline. Printed per server: the
legitimate P50 / max latency quiet and beside the stalled streams, when the server gave
each stalled stream up (closed its socket), the bytes it had sent by then, and the
server's RSS growth. With `--baseline-root PATH` (a checkout of an older commit) the same
runs against that code too, side by side.

    .venv/bin/python -m bench.bench_tts_stalled [--stalled 12] [--baseline-root /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.packs import ensure_pack
from bench.server import REPO, audioserve

TEXT = "Some words to speak here, and then some more. " * 15
SETTINGS = {"tts_piece_max_chars": 60, "tts_max_text_chars": 2000, "tts_max_waiting": 2000,
            "tts_max_paused": 1000, "tts_stream_stall_timeout_s": 5, "warmup": "false",
            "intra_op_threads": 1}


@dataclass(frozen=True)
class Result:
    name: str
    quiet_p50_s: float
    quiet_max_s: float
    busy_p50_s: float
    busy_max_s: float
    busy_errors: int
    closed_after_s: list[float]
    sent_mb: list[float]
    rss_growth_mb: float


def stalled(host: str, port: int, seed: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    body = json.dumps({"text": TEXT, "seed": seed, "stream": True, "format": "pcm",
                       "sample_rate": 48000}).encode()
    sock.sendall(f"POST /tts HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def legit(url: str, n: int, timeout_s: float) -> tuple[list[float], int]:
    times, errors = [], 0
    with httpx.Client(timeout=timeout_s) as client:
        for i in range(n):
            started = time.perf_counter()
            try:
                r = client.post(url + "/tts", json={"text": "hello there", "seed": i,
                                                    "max_new_tokens": 40, "format": "pcm"})
                errors += r.status_code != 200
            except httpx.HTTPError:
                errors += 1
            times.append(time.perf_counter() - started)
    return times, errors


def watch_closed(sock: socket.socket, opened: float, out: list[float],
                 sent: list[float], limit_s: float) -> None:
    """Wait (reading nothing) until the server closes its side, then count its bytes."""
    while time.perf_counter() - opened < limit_s:
        time.sleep(0.25)
        try:
            peek = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:
            break
        if peek == b"":
            break
        state = sock.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 256)[0]  # tcpi_state
        if state in (7, 8):  # TCP_CLOSE / TCP_CLOSE_WAIT: the server closed, data unread
            break
    out.append(time.perf_counter() - opened)
    total = 0
    sock.settimeout(2)
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except OSError:
        pass
    sock.close()
    sent.append(total / 1e6)


def run(name: str, root: Path, models_dir: Path, log_dir: Path, stalled_n: int,
        legit_n: int, limit_s: float) -> Result:
    with audioserve(name, models_dir, {k: str(v) for k, v in SETTINGS.items()},
                    log_dir=log_dir, service_root=root).start() as server:
        legit(server.url, 2, limit_s)  # warm the graphs
        quiet, _ = legit(server.url, legit_n, limit_s)
        rss0 = server.rss_mb()
        host, port = "127.0.0.1", server.port
        socks = [stalled(host, port, 5 + i) for i in range(stalled_n)]
        opened = time.perf_counter()
        closed: list[float] = []
        sent: list[float] = []
        watchers = [threading.Thread(target=watch_closed, args=(s, opened, closed, sent,
                                                                limit_s)) for s in socks]
        for w in watchers:
            w.start()
        time.sleep(1.0)
        busy, errors = legit(server.url, legit_n, limit_s)
        rss = max(rss0, server.rss_mb())
        for w in watchers:
            w.join()
        rss = max(rss, server.rss_mb())
    return Result(name, statistics.median(quiet), max(quiet), statistics.median(busy),
                  max(busy), errors, sorted(closed), sorted(sent), rss - rss0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stalled", type=int, default=12)
    parser.add_argument("--legit", type=int, default=5)
    parser.add_argument("--limit-s", type=float, default=120.0)
    parser.add_argument("--baseline-root", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_tts_stalled_"))
    models_dir = args.models_dir or work / "models"
    status = ensure_pack("chattts", models_dir, log_dir=work)
    if not status.ok:
        raise SystemExit(f"no ChatTTS pack: {status.detail}")
    roots = [("audioserve", REPO)]
    if args.baseline_root:
        roots.append(("baseline", args.baseline_root.resolve()))
    results = [run(name, root, models_dir, work, args.stalled, args.legit, args.limit_s)
               for name, root in roots]
    print(f"\n{args.stalled} streaming clients that never read (48 kHz PCM, "
          f"{len(TEXT)} chars), {args.legit} legitimate one-shot /tts beside them\n")
    print("| server | legit P50 quiet s | legit P50 beside s | beside / quiet | legit max "
          "beside s | errors | stalled closed after s (min-max) | MB sent per stalled "
          "(min-max) | RSS growth MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for r in results:
        print(f"| {r.name} | {r.quiet_p50_s:.2f} | {r.busy_p50_s:.2f} | "
              f"{r.busy_p50_s / r.quiet_p50_s:.1f}x | {r.busy_max_s:.2f} | {r.busy_errors} | "
              f"{r.closed_after_s[0]:.1f}-{r.closed_after_s[-1]:.1f} | "
              f"{r.sent_mb[0]:.1f}-{r.sent_mb[-1]:.1f} | {r.rss_growth_mb:.0f} |")


if __name__ == "__main__":
    main()
