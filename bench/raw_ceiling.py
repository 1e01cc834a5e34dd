"""The raw ONNX Runtime ceiling: items/s of a pack's main graph called in a plain loop at a
fixed batch size, with the session options the service uses — no HTTP, no decode, no
batcher. Service throughput is reported as a ratio to this.

The loops are the model helpers' micro-benchmarks (`bench/bench_clap_raw.py`,
`bench/bench_emotion_raw.py`); this module only puts their figures in one unit per
endpoint: CLAP counts 10 s windows (one audio-graph row each), Emotion2Vec audio seconds
through 5 s clips (issue 4's setting), so the service's mixed-length bodies compare.

Run alone: .venv/bin/python -m bench.raw_ceiling models/clap [--batch 1 4 8 16]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench import bench_clap_raw, bench_emotion_raw
from service.packs import load_pack
from service.runtime import GraphRunner, RuntimeConfig, create_session


@dataclass(frozen=True)
class CeilingPoint:
    model: str
    batch: int
    items_per_s: float
    unit: str


def clap_ceiling(pack_dir: Path, batch_sizes: list[int], seconds: float,
                 threads: int) -> list[CeilingPoint]:
    pack = load_pack(pack_dir, expected_kind="clap")
    c = pack.constants
    frames = int(c["max_length_samples"]) // int(c["hop_length"]) + 1
    runner = GraphRunner(create_session(pack.graph("audio", "fp32")[0],
                                        RuntimeConfig("auto", 0, threads)))
    return [CeilingPoint("clap", b, bench_clap_raw.measure(runner, b, frames, int(c["n_mels"]),
                                                           seconds, 3)[0], "windows")
            for b in batch_sizes]


def emotion_ceiling(pack_dir: Path, batch_sizes: list[int], seconds: float,
                    threads: int) -> list[CeilingPoint]:
    rows = bench_emotion_raw.ceiling(pack_dir, batch_sizes, seconds, threads)
    return [CeilingPoint("emotion2vec", b, clips * bench_emotion_raw.CLIP_S, "audio_s")
            for b, clips in rows]


CEILINGS = {"clap": clap_ceiling, "emotion2vec": emotion_ceiling}


def ceiling(model: str, pack_dir: Path, batch_sizes: list[int], seconds: float = 3.0,
            threads: int = 0) -> list[CeilingPoint]:
    return CEILINGS[model](pack_dir, batch_sizes, seconds, threads)


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
