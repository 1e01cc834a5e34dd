"""The cliff curve of WS /v1/audio/speech/stream: K concurrent voice-agent sessions.

K sessions stay open at once, as K users talking to agents: each connects, sends
`session.config`, then `--turns` replies. A reply is three sentences written word by
word at an LLM's pace (a rate drawn per session in `--wps`, default 15-30 words/s), then
`input.done`; the session reads the audio, waits until a player started at its first
byte would have played it all, plus the user's turn (0.5-1.5 s, drawn), and writes the
next reply. Sessions start spread over `--spread` seconds (default 5, about one reply's
cycle of writing, listening and a turn, so the K users are at independent points of
their conversations from the start, as on a server that has been up a while; `--spread
2` is a ramp of K new users, `--burst` starts them together).

Per reply: time to first audio (TTFA: from the moment the first sentence was complete
in the text sent, which is when generation can start, to its first audio byte), underrun
(the silence a player that starts at the first byte would have had, from the arrival
times and sizes of the PCM frames), split in two: waiting on text, a silence before a
sentence's first audio when its text was completed only after the audio before it had
run out (the LLM's pace plus that sentence's own first-audio latency, which the TTFA
figures cover; with random weights a sentence may stop after a few tokens, so this
happens), and the underrun proper, every other silence: the server had the text in time
and still left the player without audio) and its real-time factor (RTF: first word
sent -> last audio byte, over its audio seconds; < 1: the reply's audio was all there
before a player started with the text would have needed it). Per K: TTFA P50/P95/P99, underrun, RTF
mean/P95, and the server's output in x real time (audio seconds of all replies / wall
time). K = 1, 2, 4, 8, 16, 32 and beyond. Servers (`--servers`), all up at once, their
rounds interleaved (`--rounds` per point, server after server, so a drift of the
machine hits them alike): `continuous` (the defaults: continuous batching),
`sequential` (TTS_SCHEDULING=sequential: one lock, the Kokoro / ChatTTS-API model) and,
on demand, `deflate` (continuous with WS_COMPRESSION on, which the client accepts).
Small K get more turns, so every point has at least `--min-replies` replies (K=1's P95
is the target's baseline). The issue's target: up to the highest K whose RTF P95 stays
below 1, TTFA P95 <= 2x its value at K=1 and no underrun (the server's part).

Random weights stop where they please (a sentence may end after two tokens and leave
the player waiting for the next sentence's text), so every sentence is held to exactly
`--tokens` (default 60 = 1.3 s of audio: `min_new_tokens` = `max_new_tokens`), as a
trained model's speech is longer than the time its text takes to write.

    .venv/bin/python -m bench.bench_speech_stream [--quick] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from bench.packs import ensure_pack
from bench.server import audioserve

RATE = 24000
REPLY = ("Sure, I can help with that today. First we look at what went wrong last night. "
         "Then we fix it and check that everything works again.")
GAP_S = 0.1
"""A gap a listener hears (the `smooth` share counts replies with none longer)."""


@dataclass(frozen=True)
class Reply:
    ttfa_s: float
    underrun_s: float
    """Silence although the server had the text in time."""
    text_wait_s: float
    """Silence before a sentence whose text came after the audio before it ran out."""
    max_gap_s: float
    audio_s: float
    rtf: float


@dataclass(frozen=True)
class Point:
    server: str
    sessions: int
    replies: int
    ttfa_p50: float
    ttfa_p95: float
    ttfa_p99: float
    underrun_mean: float
    underrun_max: float
    text_wait_mean: float
    smooth: float
    """Share of replies with no gap over GAP_S."""
    rtf_mean: float
    rtf_p95: float
    x_real_time: float
    """Audio seconds of all replies / wall seconds of the round."""


@dataclass
class Player:
    """A player that starts at the first audio byte, and who its silences are owed to."""

    complete_at: list[float]
    """When each sentence's text was all sent."""
    first: float | None = None
    last: float = 0.0
    play_end: float = 0.0
    samples: int = 0
    underrun: float = 0.0
    text_wait: float = 0.0
    max_gap: float = 0.0
    sentence: int = 0
    sentence_starts: bool = False
    """The next frame is a sentence's first audio."""

    def on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "audio.start":
            self.sentence, self.sentence_starts = event["sentence_index"], True

    def on_audio(self, now: float, frame: bytes) -> None:
        if self.first is None:
            self.first = self.play_end = now
        if now > self.play_end:  # a gap: whose wait was it?
            there = (self.complete_at[self.sentence]
                     if self.sentence < len(self.complete_at) else now)
            if self.sentence_starts and there > self.play_end:
                self.text_wait += now - self.play_end
            else:
                self.underrun += now - self.play_end
                self.max_gap = max(self.max_gap, now - self.play_end)
        self.sentence_starts = False
        self.play_end = max(now, self.play_end) + len(frame) / 2 / RATE
        self.samples += len(frame) // 2
        self.last = now


async def one_reply(ws: ClientConnection, wps: float) -> Reply:
    """Write one reply word by word, read its audio up to session.done."""
    words = REPLY.split(" ")
    player = Player(complete_at=[])
    started = time.perf_counter()

    async def writer() -> None:
        for i, word in enumerate(words):
            last = i == len(words) - 1
            await ws.send(json.dumps({"type": "input.text",
                                      "text": word + ("" if last else " ")}))
            if word.endswith(".") and not last:  # complete once a space follows
                player.complete_at.append(time.perf_counter())
            await asyncio.sleep(1 / wps)
        await ws.send(json.dumps({"type": "input.done"}))
        player.complete_at.append(time.perf_counter())

    task = asyncio.create_task(writer())
    async for message in ws:
        if isinstance(message, bytes):
            player.on_audio(time.perf_counter(), message)
            continue
        event = json.loads(message)
        if event["type"] == "error":
            raise RuntimeError(event)
        if event["type"] == "session.done":
            break
        player.on_event(event)
    await task
    assert player.first is not None and player.complete_at
    audio_s = player.samples / RATE
    reply = Reply(player.first - player.complete_at[0], player.underrun, player.text_wait,
                  player.max_gap, audio_s, (player.last - started) / audio_s)
    # the user listens to the end, then takes a turn
    await asyncio.sleep(max(0.0, player.play_end - time.perf_counter()))
    return reply


async def one_session(url: str, seed: int, wps: float, tokens: int, turns: int,
                      start_s: float, rng: random.Random) -> list[Reply]:
    await asyncio.sleep(start_s)
    replies = []
    async with connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "session.config", "voice": "alloy", "seed": seed,
                                  "response_format": "pcm", "max_new_tokens": tokens,
                                  "min_new_tokens": tokens}))
        for turn in range(turns):
            if turn:
                await asyncio.sleep(rng.uniform(0.5, 1.5))  # the user's turn
            replies.append(await one_reply(ws, wps))
    return replies


async def round_of(url: str, k: int, tokens: int, turns: int, wps: tuple[float, float],
                   rng: random.Random, spread_s: float) -> tuple[list[Reply], float]:
    started = time.perf_counter()
    runs = [one_session(url, i, rng.uniform(*wps), tokens, turns,
                        rng.uniform(0, spread_s), random.Random(rng.random()))
            for i in range(k)]
    results = await asyncio.gather(*runs)
    return [r for replies in results for r in replies], time.perf_counter() - started


def point(name: str, k: int, replies: list[Reply], wall: float) -> Point:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    ttfa = [r.ttfa_s for r in replies]
    under = [r.underrun_s for r in replies]
    rtf = [r.rtf for r in replies]
    return Point(name, k, len(replies), pct(ttfa, 50), pct(ttfa, 95), pct(ttfa, 99),
                 float(np.mean(under)), float(np.max(under)),
                 float(np.mean([r.text_wait_s for r in replies])),
                 sum(r.max_gap_s <= GAP_S for r in replies) / len(replies),
                 float(np.mean(rtf)), pct(rtf, 95),
                 sum(r.audio_s for r in replies) / wall)


def table(points: list[Point]) -> str:
    lines = ["| server | K | replies | TTFA P50 ms | P95 ms | P99 ms | underrun mean s | "
             "max s | smooth | waiting on text mean s | RTF mean | RTF P95 | x real time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for p in points:
        lines.append(f"| {p.server} | {p.sessions} | {p.replies} | {1000 * p.ttfa_p50:.0f} | "
                     f"{1000 * p.ttfa_p95:.0f} | {1000 * p.ttfa_p99:.0f} | "
                     f"{p.underrun_mean:.3f} | {p.underrun_max:.3f} | {p.smooth:.0%} | "
                     f"{p.text_wait_mean:.3f} | "
                     f"{p.rtf_mean:.2f} | {p.rtf_p95:.2f} | {p.x_real_time:.1f} |")
    return "\n".join(lines)


def verdict(points: list[Point]) -> list[str]:
    """The issue's target per server: up to the highest K whose RTF P95 stays below 1,
    TTFA P95 <= 2x its K=1 value and no underrun."""
    lines = []
    for name in sorted({p.server for p in points}):
        ps = sorted((p for p in points if p.server == name), key=lambda p: p.sessions)
        base = ps[0].ttfa_p95
        keeps_up = [p for p in ps if p.rtf_p95 < 1]
        top = max((p.sessions for p in keeps_up), default=0)
        misses = [f"K={p.sessions} (TTFA P95 {1000 * p.ttfa_p95:.0f} ms, underrun max "
                  f"{p.underrun_max:.3f} s)" for p in ps
                  if p.sessions <= top and (p.ttfa_p95 > 2 * base or p.underrun_max > 0)]
        held = max((p.sessions for p in ps if p.sessions <= top
                    and all(q.ttfa_p95 <= 2 * base and q.underrun_max == 0
                            for q in ps if q.sessions <= p.sessions)), default=0)
        lines.append(f"- {name}: K=1 TTFA P95 {1000 * base:.0f} ms; RTF P95 < 1 up to K={top}; "
                     f"target held up to K={held}"
                     + (f"; missed at {', '.join(misses)}" if misses else " (met)"))
    return lines


def plot(points: list[Point], out: Path) -> None:
    """The curve as a PNG; without matplotlib (the `bench` extra) only the table."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is not installed (pip install -e '.[bench]'); {out}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({p.server for p in points}):
        ps = [p for p in points if p.server == name]
        ks = [p.sessions for p in ps]
        (line,) = a.plot(ks, [1000 * p.ttfa_p95 for p in ps], marker="o", label=f"{name} P95")
        colour = line.get_color()  # one colour per server in both panels
        a.plot(ks, [1000 * p.ttfa_p50 for p in ps], marker=".", ls="--", color=colour,
               label=f"{name} P50")
        b.plot(ks, [p.underrun_mean for p in ps], marker="o", color=colour, label=name)
    base = min((p for p in points if p.sessions == 1), key=lambda p: p.ttfa_p95, default=None)
    if base is not None:
        a.axhline(2000 * base.ttfa_p95, color="grey", lw=0.8, ls=":", label="2x K=1 P95")
    a.set_yscale("log")
    for ax, title in ((a, "time to first audio (ms)"), (b, "mean underrun per reply (s)")):
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
    parser.add_argument("--turns", type=int, default=3, help="replies per session")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds per point, the servers' rounds interleaved")
    parser.add_argument("--min-replies", type=int, default=12,
                        help="small K get more turns, so every point's percentiles (K=1's "
                        "is the target's baseline) come from at least this many replies")
    parser.add_argument("--spread", type=float, default=5.0,
                        help="seconds over which the sessions start (default: about one "
                        "reply cycle)")
    parser.add_argument("--burst", action="store_true",
                        help="start every session at once (--spread 0)")
    parser.add_argument("--quick", action="store_true",
                        help="K = 1, 4, 16, no extra turns for small K")
    parser.add_argument("--servers", default="continuous,sequential",
                        help="continuous: continuous batching (the default settings); "
                        "deflate: the same with WebSocket compression on; sequential: one "
                        "lock")
    parser.add_argument("--compare", nargs="*", default=[], metavar="SETTING=VALUE[,...]",
                        help="also measure the defaults with these settings changed, as a "
                        "server of that name (e.g. tts_stream_chunk_tokens=4), its rounds "
                        "interleaved with the others")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replot", type=Path, help="redraw DIR/cliff.png from its points")
    args = parser.parse_args()
    if args.replot:
        plot([Point(**p) for p in json.loads((args.replot / "points.json").read_text())],
             args.replot / "cliff.png")
        return
    if args.quick:
        args.sessions, args.min_replies = "1,4,16", 0
    spread_s = 0.0 if args.burst else args.spread
    low, high = (float(x) for x in args.wps.split(","))
    wps = (low, high)
    tmp = Path(tempfile.mkdtemp(prefix="bench_speech_stream_"))
    models_dir = args.models_dir or tmp / "models"
    status = ensure_pack("chattts", models_dir, log_dir=tmp / "logs")
    if not status.ready:
        raise SystemExit(f"no ChatTTS pack: {status.note}")
    points: list[Point] = []
    servers = {"continuous": {}, "deflate": {"ws_compression": True},
               "sequential": {"tts_scheduling": "sequential"}}
    for changed in args.compare:
        servers[changed] = dict(setting.split("=", 1) for setting in changed.split(","))
    names = args.servers.split(",") + args.compare
    with contextlib.ExitStack() as running:
        urls = {}
        for name in names:  # all up at once (idle ones cost nothing): rounds interleave
            settings = {"models": "chattts", "intra_op_threads": 1, "tts_max_active": 32,
                        "max_queue": 4096, "request_timeout_s": 600,
                        "tts_ws_max_sessions": 256, **servers[name]}
            server = audioserve(name, models_dir, {k: str(v) for k, v in settings.items()},
                                log_dir=tmp / "logs")
            running.enter_context(server.start(600))
            urls[name] = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
        rng = random.Random(1)
        for url in urls.values():
            await round_of(url, 1, 8, 1, wps, rng, 0.0)  # warm
        for k in (int(x) for x in args.sessions.split(",")):
            turns = max(args.turns, -(-args.min_replies // k))
            got: dict[str, tuple[list[Reply], float]] = {name: ([], 0.0) for name in names}
            for _ in range(args.rounds):  # server after server, round after round: a
                for name in names:        # drift of the machine hits them alike
                    replies, wall = await round_of(urls[name], k, args.tokens, turns, wps,
                                                   rng, spread_s)
                    got[name] = (got[name][0] + replies, got[name][1] + wall)
            for name in names:
                points.append(point(name, k, *got[name]))
                print(table(points[-1:]).splitlines()[-1], flush=True)
    print(table(points))
    print("\n".join(verdict(points)))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "points.json").write_text(json.dumps([asdict(p) for p in points],
                                                         indent=1))
        (args.out / "table.md").write_text(table(points) + "\n\n"
                                           + "\n".join(verdict(points)) + "\n")
        plot(points, args.out / "cliff.png")


if __name__ == "__main__":
    asyncio.run(main())
