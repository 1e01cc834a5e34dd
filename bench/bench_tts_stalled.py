"""Streaming TTS clients that never read, and a legitimate `/tts` beside them (issue 13, 6).

The server runs as its own process (`python -m service`, bench/server.py) on the tiny
pack. N clients (default 12) each send a streaming `POST /tts` (48 kHz PCM of a long,
many-piece text: tens of MB, far more than the kernel's socket buffers hold) and then
never read. Meanwhile a client sends short one-shot `/tts` requests one after another;
the same client on the quiet server, in the same run, is the baseline. Printed per
server: the legitimate latency (P50 / max) in time windows after the stalled streams
opened, the bytes the server sent each stalled stream, how many of those streams were
generated to the end, and the server's peak RSS growth. With `--baseline-root PATH` (a
checkout of an older commit) the same runs against that code too, side by side.

    .venv/bin/python -m bench.bench_tts_stalled [--stalled 12] [--speed 1.0]
        [--baseline-root /tmp/base]

`--speed` (issue 21, item 7): the stalled streams ask for that speed; before the
streaming stretch a stretched piece was generated whole before any of it was sent, so
stalled streams at 0.5 or 2.0 never paused.
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

TEXT = "Some words to speak here, and then some more. " * 40
SETTINGS = {"tts_max_text_chars": 2000, "tts_max_waiting": 2000, "tts_piece_max_chars": 40,
            "tts_stream_stall_timeout_s": 20, "warmup": "false", "intra_op_threads": 1}
WINDOWS_S = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0))
DRAIN_AFTER_S = 45.0
"""The stalled sockets are read only after the stall timeout (20 s) has passed: reading
earlier would let their streams go on."""


@dataclass(frozen=True)
class Result:
    name: str
    quiet_p50_s: float
    windows: list[tuple[float, float, int]]
    """Per window of WINDOWS_S: P50 and max latency of the legitimate requests, and count."""
    errors: int
    sent_mb: list[float]
    complete: int
    """Stalled streams whose body ended normally (all generated, nothing cut)."""
    rss_growth_mb: float


def stalled(host: str, port: int, seed: int, speed: float) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    body = json.dumps({"text": TEXT, "seed": seed, "stream": True, "format": "pcm",
                       "sample_rate": 48000, "speed": speed}).encode()
    sock.sendall(f"POST /tts HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def legit(url: str, until: float, timeout_s: float, started_at: float
          ) -> tuple[list[tuple[float, float]], int]:
    """Short one-shot /tts one after another until `until`: (offset, latency) each."""
    samples, errors, i = [], 0, 0
    with httpx.Client(timeout=timeout_s) as client:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            try:
                r = client.post(url + "/tts", json={"text": "hello there", "seed": i,
                                                    "max_new_tokens": 40, "format": "pcm"})
                errors += r.status_code != 200
            except httpx.HTTPError:
                errors += 1
            samples.append((t0 - started_at, time.perf_counter() - t0))
            i += 1
            time.sleep(0.2)
    return samples, errors


def drain(sock: socket.socket) -> tuple[float, bool]:
    """Read what the server sent (MB), and whether the chunked body ended normally."""
    total, tail = 0, b""
    sock.settimeout(3)
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
            tail = (tail + chunk)[-5:]
    except OSError:
        pass
    sock.close()
    return total / 1e6, tail == b"0\r\n\r\n"


def run(name: str, root: Path, models_dir: Path, log_dir: Path, stalled_n: int,
        duration_s: float, speed: float = 1.0) -> Result:
    with audioserve(name, models_dir, {k: str(v) for k, v in SETTINGS.items()},
                    log_dir=log_dir, service_root=root).start() as server:
        quiet, _ = legit(server.url, time.perf_counter() + 3.0, 60, time.perf_counter())
        rss0 = server.rss_mb()
        socks = [stalled("127.0.0.1", server.port, 5 + i, speed) for i in range(stalled_n)]
        opened = time.perf_counter()
        rss = [rss0]
        sampler_stop = threading.Event()

        def sample_rss() -> None:
            while not sampler_stop.wait(0.5):
                rss.append(server.rss_mb())

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        busy, errors = legit(server.url, opened + duration_s, 120, opened)
        time.sleep(max(0.0, opened + DRAIN_AFTER_S - time.perf_counter()))
        sampler_stop.set()
        sampler.join()
        drained = [drain(sock) for sock in socks]
    windows = []
    for lo, hi in WINDOWS_S:
        lat = [latency for offset, latency in busy if lo <= offset < hi]
        windows.append((statistics.median(lat) if lat else float("nan"),
                        max(lat, default=float("nan")), len(lat)))
    return Result(name, statistics.median(x for _, x in quiet[1:]), windows, errors,
                  sorted(mb for mb, _ in drained), sum(done for _, done in drained),
                  max(rss) - rss0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stalled", type=int, default=12)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--baseline-root", type=Path, default=None)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_tts_stalled_"))
    models_dir = args.models_dir or work / "models"
    status = ensure_pack("chattts", models_dir, log_dir=work)
    if not status.ready:
        raise SystemExit(f"no ChatTTS pack: {status.note}")
    roots = [("audioserve", REPO)]
    if args.baseline_root:
        roots.append(("baseline", args.baseline_root.resolve()))
    results = [run(name, root, models_dir, work, args.stalled, args.duration_s, args.speed)
               for name, root in roots]
    print(f"\n{args.stalled} streaming clients that never read (48 kHz PCM of {len(TEXT)} "
          f"characters each, speed {args.speed:g}); short one-shot /tts one after another "
          "beside them. Legitimate latency P50 / max (n) per window after the stalled "
          "streams opened:\n")
    heads = " | ".join(f"{lo:g}-{hi:g} s" for lo, hi in WINDOWS_S)
    print(f"| server | quiet P50 s | {heads} | errors | MB sent per stalled stream | "
          "stalled streams completed | RSS growth MB |")
    print("| --- | ---: |" + " ---: |" * len(WINDOWS_S) + " ---: | --- | ---: | ---: |")
    for r in results:
        cells = " | ".join(f"{p50:.2f} / {top:.2f} ({n})" for p50, top, n in r.windows)
        print(f"| {r.name} | {r.quiet_p50_s:.2f} | {cells} | {r.errors} | "
              f"{r.sent_mb[0]:.1f}-{r.sent_mb[-1]:.1f} | {r.complete} of {args.stalled} | "
              f"{r.rss_growth_mb:.0f} |")


if __name__ == "__main__":
    main()
