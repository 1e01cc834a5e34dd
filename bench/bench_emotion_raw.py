"""Raw ONNX Runtime ceiling of the Emotion2vec graph: throughput at batch 1, 4 and 8.

    .venv/bin/python bench/bench_emotion_raw.py [--base-dir build/emotion2vec-base]

Packs: the tiny one (built into a temp dir) and `--random-real base` (built into
`build/emotion2vec-base` when missing: ~360 MB, a minute or two). Each batch holds 5 s
clips; every figure is measured in this run, and the ratios are against batch 1 of the same
pack, so the table says what batching buys on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import emotion2vec as exp

SR = 16_000
BATCHES = (1, 4, 8)


def open_session(pack: Path, threads: int, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" \
        else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(pack / exp.GRAPH_FILE), options, providers=providers)


def time_batch(session: ort.InferenceSession, batch: int, seconds: float, repeats: int
               ) -> list[float]:
    rng = np.random.default_rng(batch)
    wav = (0.1 * rng.standard_normal((batch, round(seconds * SR)))).astype(np.float32)
    feeds = {"waveform": wav, "lengths": np.full(batch, wav.shape[1], np.int64)}
    session.run(exp.OUTPUTS, feeds)  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(exp.OUTPUTS, feeds)
        times.append(time.perf_counter() - t)
    return times


def bench_pack(name: str, pack: Path, args: argparse.Namespace, repeats: int) -> None:
    session = open_session(pack, args.threads, args.provider)
    base_rate = None
    for batch in BATCHES:
        times = time_batch(session, batch, args.seconds, repeats)
        median = statistics.median(times)
        rate = batch / median
        base_rate = base_rate or rate
        print(f"| {name} | {batch} | {median * 1000:9.1f} | {rate:8.2f} | "
              f"{rate * args.seconds:8.1f} | {rate / base_rate:5.2f}x |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-dir", type=Path, default=Path("build/emotion2vec-base"))
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats-tiny", type=int, default=20)
    parser.add_argument("--repeats-base", type=int, default=3)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, provider {args.provider}, threads {args.threads}, "
          f"{args.seconds:g} s clips")
    print("| pack | batch | median ms/batch | clips/s | audio s/s | vs batch 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        exp.build_tiny(Path(tmp) / "tiny")
        bench_pack("tiny", Path(tmp) / "tiny", args, args.repeats_tiny)
    if not args.skip_base:
        if not (args.base_dir / "manifest.json").is_file():
            exp.build_random(args.base_dir, "base", seed=exp.TINY_SEED)
        bench_pack("random-real base", args.base_dir, args, args.repeats_base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
