"""Live analysis under load: N concurrent WebSocket streams of real speech at real-time pace.

Each stream sends 16 kHz 16-bit speech (the RAVDESS clips of ../shared/data/speech with
silences between them, each stream rotated to its own phase of that speech) in frames of
`--frame-s` (100 ms) on a real-time clock, both tasks on (CLAP every
`hop_s`, emotion per utterance). Per N: result lag P50/P99 (the client's clock: the frame
holding a result's last sample sent -> the result received), skipped results, and the
server's CPU seconds per stream-second (its whole process tree, /proc). The same run is
repeated with MAX_BATCH_SIZE=1 (no batching), and the model ceiling is measured alone
(bench.raw_ceiling: the graphs at their best batch and threads, no service), so
`held / ceiling` says what share of the raw models the service turns into live streams.
The ceiling is measured beside every N (the servers idle meanwhile) and each point is
read against its own: this shared host's speed drifts by 10-20 % within minutes, and a
ceiling taken once at the end made a point's share depend on when it ran.

Two ceilings, both from the graphs alone at the service's threads:
- CLAP only (`--tasks classify`, the issue's definition): windows/s ÷ windows per
  stream-second (= windows/s x hop_s).
- both tasks: a stream-second costs 1/hop_s windows of CLAP plus its speech seconds
  (what the endpointer found, measured in the run) through emotion2vec, each at its
  graph's own rate; the ceiling is 1 / that cost (the two graphs share the cores).

    .venv/bin/python -m bench.bench_live [--streams 1 2 4 8 16] [--seconds 15]
        [--tasks both classify] [--random-real] [--out bench/results/live-<stamp>]

Held: P99 lag < 1 s and nothing skipped. Writes <out>.md, <out>/points.json, <out>/lag.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import connect

from bench import prom, raw_ceiling
from bench.bodies import SPEECH_DIR
from bench.packs import ensure_pack
from bench.server import REPO, ServerProcess, audioserve, cpu_used_by_role, http_get

LABELS = ["speech", "music", "dog barking", "rain", "siren", "applause", "laughter",
          "car horn"]
HELD_P99_S = 1.0


@dataclass(frozen=True)
class Workload:
    """What every stream of a point sends."""

    seconds: float
    hop_s: float
    """CLAP's hop."""
    frame_s: float
    """Audio per binary frame (100 ms: a MediaRecorder timeslice a browser would use)."""
    speech: Path
    rate: int = 16_000
    """The streams' sample rate: 16 kHz (a telephony or ASR-style source), or 48 kHz (a
    browser's microphone), where CLAP's windows need no resampling and share log-mel
    frames (service.audio.logmel_cache) while emotion's audio is resampled as a stream."""


@dataclass
class StreamResult:
    lags_s: list[float] = field(default_factory=list)
    emotion_lags_s: list[float] = field(default_factory=list)
    windows: int = 0
    utterances: int = 0
    skipped: int = 0
    speech_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str, float]] = field(default_factory=list)
    """(received, monotonic s; result type; lag s) of every result: when lags cluster."""


@dataclass(frozen=True)
class Ceiling:
    """The graphs alone, at their best (`best_rate`)."""

    clap_windows_s: float
    emotion_audio_s_s: float

    def streams(self, tasks: str, hop_s: float, speech_fraction: float) -> float:
        """Streams the graphs alone could keep up with (see the module docstring)."""
        cost = 1 / (hop_s * self.clap_windows_s)  # graph seconds per stream-second
        if tasks == "both":
            cost += speech_fraction / self.emotion_audio_s_s
        return 1 / cost


@dataclass
class Point:
    config: str
    streams: int
    seconds: float
    p50_s: float
    p99_s: float
    emotion_p50_s: float
    emotion_p99_s: float
    results: int
    windows: int
    utterances: int
    skipped: int
    errors: int
    cpu_s_per_stream_s: float
    speech_fraction: float = 0.0
    """Utterance seconds per stream second (what emotion2vec computes)."""
    late: int = 0
    """Results whose lag (the client's) passed HELD_P99_S."""
    server_late: int = 0
    """Of all results, those the server itself sent more than HELD_P99_S after their last
    sample arrived (audioserve_live_result_lag_seconds): `late` minus this is time spent
    outside the server's part (socket, client)."""
    clap_windows_s: float = float("nan")
    emotion_audio_s_s: float = float("nan")
    """The graphs' ceiling measured just before this N (`Ceiling`)."""

    @property
    def ceiling(self) -> Ceiling:
        return Ceiling(self.clap_windows_s, self.emotion_audio_s_s)

    def read_against(self, ceiling: Ceiling) -> None:
        self.clap_windows_s = ceiling.clap_windows_s
        self.emotion_audio_s_s = ceiling.emotion_audio_s_s

    @property
    def held(self) -> bool:
        return (max(self.p99_s, self.emotion_p99_s) < HELD_P99_S and self.skipped == 0
                and self.errors == 0)


def speech_audio(seconds: float, folder: Path = SPEECH_DIR, rate: int = 16_000) -> np.ndarray:
    """Real speech clips with 1 s gaps, 16-bit at 16 kHz, repeated to `seconds`."""
    parts: list[np.ndarray] = []
    clips = sorted(folder.glob("*.flac"))
    if not clips:
        raise SystemExit(f"no speech clips (*.flac) in {folder}: give --speech-dir")
    for path in clips:
        samples, clip_rate = sf.read(path, dtype="float32")
        parts += [np.zeros(rate, np.float32), soxr.resample(samples, clip_rate, rate)]
        if sum(len(p) for p in parts) >= seconds * rate:
            break
    audio = np.concatenate(parts)[:round(seconds * rate)]
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")


async def one_stream(url: str, audio: np.ndarray, offset_s: float, tasks: str,
                     w: Workload) -> StreamResult:
    result = StreamResult()
    frame = round(w.frame_s * w.rate)
    sent_at: list[tuple[float, float]] = []  # (audio end in s, wall time sent)
    await asyncio.sleep(offset_s)  # streams start spread over one hop
    async with connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({
            "type": "session.config", "input": {"format": "pcm_s16le", "sample_rate": w.rate},
            "classify": {"labels": LABELS, "hop_s": w.hop_s},
            "emotion": {} if tasks == "both" else None}))

        async def send() -> None:
            start = time.monotonic()
            for k, i in enumerate(range(0, len(audio), frame)):
                delay = start + k * w.frame_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(audio[i:i + frame].tobytes())
                sent_at.append((min(i + frame, len(audio)) / w.rate, time.monotonic()))
            await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(send())
        async for message in ws:
            now = time.monotonic()
            event = json.loads(message)
            kind = event["type"]
            if kind in ("classify.window", "emotion.utterance"):
                end = event["end_s"]
                sent = next((t for a, t in sent_at if a >= end - 1e-6), now)
                result.timeline.append((now, kind, max(0.0, now - sent)))
                if kind == "classify.window":
                    result.windows += 1
                    result.lags_s.append(max(0.0, now - sent))
                else:
                    result.utterances += 1
                    result.speech_s += end - event["start_s"]
                    result.emotion_lags_s.append(max(0.0, now - sent))
            elif kind == "skipped":
                result.skipped += 1
            elif kind == "error":
                result.errors.append(event["code"])
        await sender
    return result


async def run_point(url: str, streams: int, tasks: str, w: Workload) -> list[StreamResult]:
    audio = speech_audio(w.seconds, w.speech, w.rate)
    # N independent speakers are not in step: stream i starts i/N of the way into the
    # speech (rotated), so utterances end spread over time, not in one burst per clip.
    # Windows are spread too: stream i starts i/N of a hop late.
    runs = [one_stream(url, np.roll(audio, -(len(audio) * i // streams)),
                       w.hop_s * i / streams, tasks, w) for i in range(streams)]
    return list(await asyncio.gather(*runs, return_exceptions=False))


def metrics(server: ServerProcess) -> dict[prom.Key, float]:
    status, body = http_get(server.url + "/metrics", timeout=30.0)
    return prom.snapshot(body.decode()) if status == 200 else {}


def measure(server: ServerProcess, config: str, streams: int, tasks: str, w: Workload,
            log_dir: Path) -> Point:
    url = f"ws://127.0.0.1:{server.port}/v1/audio/analysis/stream"
    before = server.cpu_seconds()
    metrics_before = metrics(server)
    results = asyncio.run(run_point(url, streams, tasks, w))
    server_late = prom.count_over(prom.delta(metrics_before, metrics(server)),
                                  "audioserve_live_result_lag_seconds", HELD_P99_S, "task",
                                  ("classify", "emotion"))
    start = min((t for r in results for t, _, _ in r.timeline), default=0.0)
    timeline = sorted((round(t - start, 3), i, kind, round(lag, 3))
                      for i, r in enumerate(results) for t, kind, lag in r.timeline)
    name = f"timeline-{config.replace(' ', '-')}-{streams}.json"
    (log_dir / name).write_text(json.dumps(timeline))
    used = sum(cpu_used_by_role(before, server.cpu_seconds()).values())
    lags = np.array([lag for r in results for lag in r.lags_s])
    emotion = np.array([lag for r in results for lag in r.emotion_lags_s])

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return Point(
        config=config, streams=streams, seconds=w.seconds,
        p50_s=pct(lags, 50), p99_s=pct(lags, 99),
        emotion_p50_s=pct(emotion, 50), emotion_p99_s=pct(emotion, 99),
        results=int(lags.size + emotion.size), windows=sum(r.windows for r in results),
        utterances=sum(r.utterances for r in results),
        skipped=sum(r.skipped for r in results),
        errors=sum(len(r.errors) for r in results),
        cpu_s_per_stream_s=used / (streams * w.seconds),
        speech_fraction=sum(r.speech_s for r in results) / (streams * w.seconds),
        late=int((lags > HELD_P99_S).sum() + (emotion > HELD_P99_S).sum()),
        server_late=round(server_late))


def sweep(models_dir: Path, configs: dict[str, dict[str, str]], streams: list[int],
          w: Workload, log_dir: Path, ceiling_now: Callable[[], Ceiling] | None) -> list[Point]:
    """Every config's server up at once (idle while another is measured), the configs
    measured in turn at each N, the ceiling just before: a drift of the machine hits them
    alike."""
    points = []
    with contextlib.ExitStack() as stack:
        servers = {config: stack.enter_context(audioserve(
            f"live-{config.replace(' ', '-')}", models_dir, settings, log_dir=log_dir).start())
            for config, settings in configs.items()}
        for n in streams:
            beside = ceiling_now() if ceiling_now is not None else None
            for config, server in servers.items():
                point = measure(server, config, n, tasks_of(config), w, log_dir)
                if beside is not None:
                    point.read_against(beside)
                print(json.dumps(asdict(point)), flush=True)
                points.append(point)
    return sorted(points, key=lambda pt: (list(configs).index(pt.config), pt.streams))


def plot(points: list[Point], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for config in sorted({p.config for p in points}):
        mine = [p for p in points if p.config == config]
        ns = [p.streams for p in mine]
        ax.plot(ns, [p.p50_s for p in mine], "o--", label=f"{config} window P50")
        ax.plot(ns, [p.p99_s for p in mine], "o-", label=f"{config} window P99")
        ax.plot(ns, [p.emotion_p99_s for p in mine], "s:", label=f"{config} utterance P99")
    ax.axhline(HELD_P99_S, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent live streams (real-time speech, CLAP + emotion)")
    ax.set_ylabel("result lag (s)")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out / "lag.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def best_rate(model: str, pack: Path, seconds: float) -> float:
    """The graph's best rate over batch sizes 1, 2, 8 and both ways the service may run
    it on these cores (one worker with every core, or two single-threaded workers): the
    ceiling no server of this graph could pass."""
    rates = [pt.items_per_s
             for threads, workers in ((0, 1), (1, 2))
             for pt in raw_ceiling.ceiling(model, pack, [1, 2, 8], seconds=seconds,
                                           threads=threads, workers=workers)]
    return max(rates)


def tasks_of(config: str) -> str:
    return config.split()[0]


def report(points: list[Point], hop_s: float, args: argparse.Namespace, out: Path,
           plot_path: Path | None) -> str:
    lines = [f"# Live analysis under load ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`python -m bench.bench_live {' '.join(args.argv)}`; packs: "
             f"{'random weights at real size' if args.random_real else 'tiny test packs'}; "
             f"{args.seconds:g} s of real speech per stream at real-time pace, "
             f"{args.frame_s * 1000:g} ms frames at {args.rate / 1000:g} kHz, "
             f"CLAP hop {hop_s:g} s (+ emotion per utterance where the tasks are `both`); "
             f"held = P99 lag < {HELD_P99_S:g} s and nothing skipped.", "",
             "Lag is the client's: the frame holding a result's last sample sent -> the result "
             "received. An utterance's lag includes its end-pointing (it is known to be over "
             "only after `min_silence_ms` of non-speech: 500 ms, less the 200 ms kept after it). "
             f"`over {HELD_P99_S:g} s`: results the client got that late / those the server "
             "itself sent that long after their last frame arrived "
             "(`audioserve_live_result_lag_seconds`); the rest of the difference is the socket "
             "and the client.",
             "",
             "| tasks, config | streams | window lag P50 / P99 s | utterance lag P50 / P99 s | "
             "windows | utterances | skipped | errors | server CPU s / stream-s | "
             "over 1 s: client / server | held | ceiling beside (streams) | N / ceiling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | ---: | ---: |"]
    speech = [p.speech_fraction for p in points if p.utterances]
    fraction = float(np.median(speech)) if speech else 0.0

    def limit(p: Point) -> float:
        return p.ceiling.streams(tasks_of(p.config), hop_s, fraction)

    for p in points:
        lines.append(f"| {p.config} | {p.streams} | {p.p50_s:.3f} / {p.p99_s:.3f} | "
                     f"{p.emotion_p50_s:.3f} / {p.emotion_p99_s:.3f} | "
                     f"{p.windows} | {p.utterances} | {p.skipped} | {p.errors} | "
                     f"{p.cpu_s_per_stream_s:.3f} | {p.late} / {p.server_late} | "
                     f"{'yes' if p.held else 'no'} | {limit(p):.1f} | "
                     f"{p.streams / limit(p):.3g} |")
    clap = [p.clap_windows_s for p in points]
    emotion = [p.emotion_audio_s_s for p in points]
    lines += ["", f"Raw ceilings (graphs alone, best of batch 1/2/8 and 1x2 or 2x1 threads, "
              f"measured {'before each N' if args.ceiling_at == 'each' else 'once, at the end'}): "
              f"CLAP {min(clap):.1f}-{max(clap):.1f} windows/s, "
              f"emotion2vec {min(emotion):.1f}-{max(emotion):.1f} audio s/s; the streams "
              f"carry {fraction:.2f} s of speech per second.", ""]
    for config in sorted({p.config for p in points}):
        tasks = tasks_of(config)
        held = [p for p in points if p.config == config and p.held]
        what = ("CLAP alone: windows/s x hop" if tasks == "classify"
                else "CLAP windows + emotion2vec speech seconds per stream-second")
        if not held:
            lines.append(f"- {config}: no N held ({what})")
            continue
        best = max(held, key=lambda p: p.streams)
        lines.append(f"- {config}: largest N held {best.streams} of a ceiling of "
                     f"{limit(best):.1f} streams ({what}) = "
                     f"**{best.streams / limit(best):.3g}**")
    if plot_path is not None:
        lines += ["", f"![lag]({out.name}/{plot_path.name})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--hop", type=float, default=2.0)
    p.add_argument("--rate", type=int, default=16_000,
                   help="the streams' sample rate (48000: a browser's microphone)")
    p.add_argument("--frame-s", type=float, default=0.1,
                   help="audio per binary frame (default 0.1 s)")
    p.add_argument("--tasks", nargs="+", choices=["both", "classify"], default=["both"],
                   help="both: CLAP + emotion per stream; classify: CLAP only")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--speech-dir", type=Path, default=SPEECH_DIR,
                   help="real speech clips (*.flac; default ../shared/data/speech)")
    p.add_argument("--random-real", action="store_true")
    p.add_argument("--ceiling-seconds", type=float, default=3.0)
    p.add_argument("--ceiling-at", choices=["each", "end"], default="each",
                   help="measure the ceiling before every N (default), or once at the end "
                        "(quicker: the GPU check, whose time is short)")
    p.add_argument("--set", nargs="*", default=[], metavar="SETTING=VALUE",
                   help="more AUDIOSERVE_* settings for the server (without the prefix)")
    p.add_argument("--no-unbatched", action="store_true", help="skip MAX_BATCH_SIZE=1")
    p.add_argument("--compare", nargs="*", default=[], metavar="SETTING=VALUE[,...]",
                   help="also measure a server with these settings changed, each N in "
                        "turn with the others (e.g. cpu_core_gate=false,batch_workers=2)")
    p.add_argument("--replot", type=Path, default=None,
                   help="only redraw <dir>/lag.png from <dir>/points.json")
    p.add_argument("--out", type=Path,
                   default=REPO / "bench" / "results" / f"live-{time.strftime('%Y-%m-%d-%H%M')}")
    args = p.parse_args()
    if args.replot is not None:
        saved = json.loads((args.replot / "points.json").read_text())
        print(plot([Point(**pt) for pt in saved], args.replot))
        return
    args.argv = sys.argv[1:]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    models_dir = args.models_dir or REPO / "models" / (
        "bench-random-real" if args.random_real else "bench-tiny")  # /models/ is not in git
    for model in ("clap", "emotion2vec"):
        status = ensure_pack(model, models_dir, random_real=args.random_real, log_dir=out)
        if not status.ready:
            raise SystemExit(f"{model}: {status.note}")
    live = {"live_max_streams": "1024", "live_max_ahead_s": "1", "live_max_pending": "8",
            "models": "clap,emotion2vec", "ui": "false",
            **dict(item.split("=", 1) for item in args.set)}
    workload = Workload(args.seconds, args.hop, args.frame_s, args.speech_dir, args.rate)

    def ceiling_now() -> Ceiling:
        return Ceiling(
            clap_windows_s=best_rate("clap", models_dir / "clap", args.ceiling_seconds),
            emotion_audio_s_s=best_rate("emotion2vec", models_dir / "emotion2vec",
                                        args.ceiling_seconds))

    points: list[Point] = []
    for tasks in args.tasks:
        configs = {f"{tasks} batched": live}
        if not args.no_unbatched:
            configs[f"{tasks} max_batch_1"] = {**live, "max_batch_size": "1"}
        for changed in args.compare:
            configs[f"{tasks} {changed}"] = {
                **live, **dict(setting.split("=", 1) for setting in changed.split(","))}
        points += sweep(models_dir, configs, args.streams, workload, out,
                        ceiling_now if args.ceiling_at == "each" else None)
    if args.ceiling_at == "end":
        once = ceiling_now()
        for point in points:
            point.read_against(once)
    (out / "points.json").write_text(json.dumps([asdict(pt) for pt in points], indent=1))
    text = report(points, args.hop, args, out, plot(points, out))
    out.parent.joinpath(out.name + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
