"""The raw ONNX Runtime ceiling: items/s of a pack's main graph called in a plain loop at a
fixed batch size, with the session options and the number of concurrent calls (batch
workers) the service uses — no HTTP, no decode, no batcher. Service throughput is reported
as a ratio to this.

The inputs are the model helpers' micro-benchmark feeds (`bench/bench_clap_raw.py`,
`bench/bench_emotion_raw.py`); this module puts their figures in one unit per endpoint:
CLAP counts 10 s windows (one audio-graph row each), Emotion2Vec audio seconds through 5 s
clips (issue 4's setting), so the service's mixed-length bodies compare.

Run alone: .venv/bin/python -m bench.raw_ceiling models/clap [--batch 1 4 8 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import bench_clap_raw, bench_emotion_raw
from service.runtime.packs import load_pack
from service.runtime.sessions import GraphRunner, RuntimeConfig, create_session


@dataclass(frozen=True)
class CeilingPoint:
    model: str
    batch: int
    items_per_s: float
    unit: str


def calls_per_s(call: Callable[[], object], seconds: float, workers: int) -> float:
    """Calls per second of `call` run back to back in `workers` threads at once, as the
    service's batch workers share one session (ORT releases the GIL while it runs)."""
    call()  # warm-up: allocations, kernel choice
    counts = [0] * workers
    stop_at = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop_at or counts[i] == 0:
            call()
            counts[i] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def clap_ceiling(pack_dir: Path, batch_sizes: list[int], seconds: float, threads: int,
                 workers: int) -> list[CeilingPoint]:
    pack = load_pack(pack_dir, expected_kind="clap")
    c = pack.constants
    frames = int(c["max_length_samples"]) // int(c["hop_length"]) + 1
    runner = GraphRunner(create_session(pack.graph("audio", "fp32")[0],
                                        RuntimeConfig("auto", 0, threads)))
    points = []
    for b in batch_sizes:
        feeds = bench_clap_raw.features(b, frames, int(c["n_mels"]))
        rate = calls_per_s(lambda f=feeds: runner.run(f), seconds, workers)
        points.append(CeilingPoint("clap", b, b * rate, "windows"))
    return points


def emotion_ceiling(pack_dir: Path, batch_sizes: list[int], seconds: float, threads: int,
                    workers: int) -> list[CeilingPoint]:
    runner = bench_emotion_raw.open_runner(pack_dir, threads)
    points = []
    for b in batch_sizes:
        feeds = bench_emotion_raw.feeds(b)
        rate = calls_per_s(lambda f=feeds: runner.run(f), seconds, workers)
        points.append(CeilingPoint("emotion2vec", b, b * rate * bench_emotion_raw.CLIP_S,
                                   "audio_s"))
    return points


CEILINGS = {"clap": clap_ceiling, "emotion2vec": emotion_ceiling}


def ceiling(model: str, pack_dir: Path, batch_sizes: list[int], seconds: float = 3.0,
            threads: int = 0, workers: int = 1) -> list[CeilingPoint]:
    return CEILINGS[model](pack_dir, batch_sizes, seconds, threads, workers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="concurrent calls on the session")
    args = p.parse_args()
    kind = load_pack(args.pack).kind
    for point in ceiling(kind, args.pack, args.batch, args.seconds, args.threads, args.workers):
        print(f"{point.model} batch {point.batch:>3}: {point.items_per_s:9.1f} {point.unit}/s")


if __name__ == "__main__":
    main()
