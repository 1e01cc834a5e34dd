"""The raw ONNX Runtime ceiling: items/s of a pack's main graph called in a plain loop at a
fixed batch size, with the session options the service uses — no HTTP, no decode, no
batcher. Service throughput is reported as a ratio to this.

Units: CLAP counts 10 s windows (one audio-graph row each), Emotion2Vec audio seconds
through 5 s clips (issue 4's ceiling setting), so the service's mixed-length bodies compare.
Prefers the model helpers' micro-benchmarks (`bench/bench_clap_raw.py`,
`bench/bench_emotion_raw.py`) when they expose `ceiling(pack_dir, batch_sizes, seconds,
threads)`; otherwise measures here.

Run alone: .venv/bin/python -m bench.raw_ceiling models/clap [--batch 1 4 8 16]
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.packs import load_pack
from service.runtime import GraphRunner, RuntimeConfig, create_session


@dataclass(frozen=True)
class CeilingPoint:
    model: str
    batch: int
    items_per_s: float
    unit: str


def _time_loop(run: object, feeds: dict[str, np.ndarray], batch: int,
               seconds: float) -> float:
    call = run.run  # type: ignore[attr-defined]
    call(feeds)  # warm-up: first call allocates
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 3:
        call(feeds)
        done += 1
    return batch * done / (time.perf_counter() - started)


def clap_feeds(pack_dir: Path, batch: int) -> dict[str, np.ndarray]:
    c = load_pack(pack_dir, expected_kind="clap").constants
    frames = int(c["max_length_samples"]) // int(c["hop_length"]) + 1
    rng = np.random.default_rng(0)
    shape = (batch, 1, frames, int(c["n_mels"]))
    return {"input_features": rng.standard_normal(shape).astype(np.float32) * 10 - 40}


def emotion_feeds(pack_dir: Path, batch: int, clip_seconds: float = 5.0) -> dict[str, np.ndarray]:
    c = load_pack(pack_dir, expected_kind="emotion2vec").constants
    n = int(clip_seconds * int(c["sample_rate"]))
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal((batch, n))).astype(np.float32)
    return {"waveform": wav, "lengths": np.full(batch, n, np.int64)}


EMOTION_CLIP_S = 5.0
# graph, feeds, unit, unit per graph row (emotion: audio seconds, to compare with mixed lengths)
GRAPHS = {"clap": ("audio", clap_feeds, "windows", 1.0),
          "emotion2vec": ("model", emotion_feeds, "audio_s", EMOTION_CLIP_S)}
HELPERS = {"clap": "bench.bench_clap_raw", "emotion2vec": "bench.bench_emotion_raw"}


def _from_helper(model: str, pack_dir: Path, batch_sizes: list[int], seconds: float,
                 threads: int) -> list[CeilingPoint] | None:
    try:
        module = importlib.import_module(HELPERS[model])
    except ImportError:
        return None
    fn = getattr(module, "ceiling", None)
    if fn is None:
        return None
    rows = fn(pack_dir, batch_sizes, seconds, threads)
    _, _, unit, scale = GRAPHS[model]
    return [CeilingPoint(model, int(b), float(v) * scale, unit) for b, v in rows]


def ceiling(model: str, pack_dir: Path, batch_sizes: list[int], seconds: float = 3.0,
            threads: int = 0) -> list[CeilingPoint]:
    helped = _from_helper(model, pack_dir, batch_sizes, seconds, threads)
    if helped is not None:
        return helped
    graph, feeds_for, unit, scale = GRAPHS[model]
    pack = load_pack(pack_dir, expected_kind=model)
    path, _ = pack.graph(graph, "fp32")
    runner = GraphRunner(create_session(path, RuntimeConfig("auto", 0, threads)))
    return [CeilingPoint(model, b, scale * _time_loop(runner, feeds_for(pack_dir, b), b, seconds),
                         unit) for b in batch_sizes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    kind = load_pack(args.pack).kind
    for point in ceiling(kind, args.pack, args.batch, args.seconds, args.threads):
        print(f"{point.model} batch {point.batch:>3}: {point.items_per_s:9.1f} {point.unit}/s")


if __name__ == "__main__":
    main()
