"""The cliff curve of WS /v1/audio/speech/stream: K concurrent voice-agent sessions.

Each session connects, sends `session.config`, then a reply of three sentences word by
word at an LLM's pace (a rate drawn per session in `--wps`, default 15-30 words/s), then
`input.done`, and reads the audio. Per session: time to first audio (TTFA: from the
moment the first sentence was complete in the text sent, which is when generation can
start, to its first audio byte), underrun (the silence a player that starts at the first
byte would have had, from the arrival times and sizes of the PCM frames), and audio
seconds. Aggregate real-time factor: wall time of the round / audio seconds of all its
sessions (< 1: the server keeps up). K = 1, 2, 4, 8, 16, 32 and beyond, against a
one-at-a-time server (AUDIOSERVE_TTS_SCHEDULING=sequential: one lock, the Kokoro /
ChatTTS-API model) in the same run.

Random weights rarely stop by themselves, so every sentence has the same token budget
(`--tokens`, default 60 = 1.3 s of audio).

    .venv/bin/python -m bench.bench_speech_stream [--quick] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from bench.packs import ensure_pack
from bench.server import audioserve

RATE = 24000
REPLY = ("Sure, I can help with that today. First we look at what went wrong last night. "
         "Then we fix it and check that everything works again.")


@dataclass(frozen=True)
class Session:
    ttfa_s: float
    underrun_s: float
    audio_s: float


@dataclass(frozen=True)
class Point:
    server: str
    sessions: int
    ttfa_p50: float
    ttfa_p95: float
    ttfa_p99: float
    underrun_mean: float
    underrun_max: float
    smooth: float
    """Share of sessions with no gap over 100 ms."""
    rtf: float


async def one_session(url: str, seed: int, wps: float, tokens: int) -> tuple[Session, float]:
    words = REPLY.split(" ")
    first_sentence_at: float | None = None
    async with connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "session.config", "voice": "alloy", "seed": seed,
                                  "response_format": "pcm", "max_new_tokens": tokens}))

        async def writer() -> None:
            nonlocal first_sentence_at
            for i, word in enumerate(words):
                last = i == len(words) - 1
                await ws.send(json.dumps({"type": "input.text",
                                          "text": word + ("" if last else " ")}))
                if first_sentence_at is None and word.endswith("."):
                    first_sentence_at = time.perf_counter()  # complete once a space follows
                await asyncio.sleep(1 / wps)
            await ws.send(json.dumps({"type": "input.done"}))

        task = asyncio.create_task(writer())
        play_end = first = None
        underrun, max_gap, audio = 0.0, 0.0, 0
        async for message in ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                if first is None:
                    first = play_end = now
                assert play_end is not None
                if now > play_end:
                    underrun += now - play_end
                    max_gap = max(max_gap, now - play_end)
                play_end = max(now, play_end) + len(message) / 2 / RATE
                audio += len(message) // 2
            elif json.loads(message)["type"] in ("session.done", "error"):
                break
        await task
    assert first is not None and first_sentence_at is not None
    return Session(first - first_sentence_at, underrun, audio / RATE), max_gap


async def round_of(url: str, k: int, tokens: int, wps: tuple[float, float], rng: random.Random
                   ) -> tuple[list[Session], float, list[float]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_session(url, i, rng.uniform(*wps), tokens)
                                     for i in range(k)))
    wall = time.perf_counter() - started
    return [s for s, _ in results], wall, [g for _, g in results]


def point(name: str, k: int, sessions: list[Session], wall: float, gaps: list[float]
          ) -> Point:
    ttfa = [s.ttfa_s for s in sessions]
    under = [s.underrun_s for s in sessions]
    return Point(name, k, *(float(np.percentile(ttfa, q)) for q in (50, 95, 99)),
                 float(np.mean(under)), float(np.max(under)),
                 sum(g <= 0.1 for g in gaps) / len(gaps),
                 wall / sum(s.audio_s for s in sessions))


def table(points: list[Point]) -> str:
    lines = ["| server | K | TTFA P50 ms | P95 ms | P99 ms | underrun mean s | max s | "
             "smooth | aggregate RTF |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | "
             "---: | ---: |"]
    for p in points:
        lines.append(f"| {p.server} | {p.sessions} | {1000 * p.ttfa_p50:.0f} | "
                     f"{1000 * p.ttfa_p95:.0f} | {1000 * p.ttfa_p99:.0f} | "
                     f"{p.underrun_mean:.2f} | {p.underrun_max:.2f} | {p.smooth:.0%} | "
                     f"{p.rtf:.3f} |")
    return "\n".join(lines)


def plot(points: list[Point], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({p.server for p in points}):
        ps = [p for p in points if p.server == name]
        ks = [p.sessions for p in ps]
        a.plot(ks, [1000 * p.ttfa_p95 for p in ps], marker="o", label=f"{name} P95")
        a.plot(ks, [1000 * p.ttfa_p50 for p in ps], marker=".", ls="--", label=f"{name} P50")
        b.plot(ks, [p.underrun_mean for p in ps], marker="o", label=name)
    for ax, title in ((a, "time to first audio (ms)"), (b, "mean underrun per session (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sessions")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--sessions", default="1,2,4,8,16,32,64")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--wps", default="15,30")
    parser.add_argument("--quick", action="store_true", help="K = 1, 4, 16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.sessions = "1,4,16"
    wps = tuple(float(x) for x in args.wps.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench_speech_stream_"))
    models_dir = args.models_dir or tmp / "models"
    status = ensure_pack("chattts", models_dir, log_dir=tmp / "logs")
    if not status.ready:
        raise SystemExit(f"no ChatTTS pack: {status.note}")
    points: list[Point] = []
    for name, extra in (("continuous", {}), ("sequential", {"tts_scheduling": "sequential"})):
        settings = {"models": "chattts", "intra_op_threads": 1, "tts_max_active": 32,
                    "max_queue": 4096, "request_timeout_s": 600, "tts_ws_max_sessions": 256,
                    **extra}
        server = audioserve(name, models_dir, {k: str(v) for k, v in settings.items()},
                            log_dir=tmp / "logs")
        with server.start(600):
            url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
            rng = random.Random(1)
            await round_of(url, 1, 8, wps, rng)  # warm
            for k in (int(x) for x in args.sessions.split(",")):
                sessions, wall, gaps = await round_of(url, k, args.tokens, wps, rng)
                points.append(point(name, k, sessions, wall, gaps))
                print(table(points[-1:]).splitlines()[-1], flush=True)
    print(table(points))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "points.json").write_text(json.dumps([asdict(p) for p in points],
                                                         indent=1))
        (args.out / "table.md").write_text(table(points) + "\n")
        plot(points, args.out / "cliff.png")


if __name__ == "__main__":
    asyncio.run(main())
