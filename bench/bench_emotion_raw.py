"""Raw ONNX Runtime ceiling of the Emotion2vec graph: throughput at batch 1, 4 and 8.

    .venv/bin/python bench/bench_emotion_raw.py [--tiny-dir build/emotion2vec-tiny]
                                                [--base-dir build/emotion2vec-base]

No service, no batcher: one session opened by the service's own factory (so provider and
threads are the service's) fed batches of 5 s clips. Packs that are missing are exported
first (`--random-real base`: ~360 MB, a minute or two). Every figure is measured in this
run; the ratio column is against batch 1 of the same pack, so the table says what batching
buys on this machine. `ceiling()` is what `bench/raw_ceiling.py` calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.runtime.packs import load_pack
from service.runtime.sessions import GraphRunner, RuntimeConfig, create_session

BATCHES = (1, 4, 8)
CLIP_S = 5.0


def ensure_pack(path: Path, size: str) -> Path:
    """Export the pack with the project's exporter when missing (torch only then)."""
    if (path / "manifest.json").is_file():
        return path
    from export import emotion2vec

    print(f"exporting the {size} Emotion2vec pack into {path} ...", flush=True)
    if size == "tiny":
        emotion2vec.build_tiny(path)
    else:
        emotion2vec.build_random(path, size, seed=emotion2vec.TINY_SEED)
    return path


def open_runner(pack_dir: Path, threads: int, provider: str = "auto") -> GraphRunner:
    pack = load_pack(pack_dir, expected_kind="emotion2vec")
    path, _ = pack.graph("model", "fp32")
    return GraphRunner(create_session(path, RuntimeConfig(provider, 0, threads)))


def feeds(batch: int, seconds: float = CLIP_S, rate: int = 16_000) -> dict[str, np.ndarray]:
    n = round(seconds * rate)
    wav = (0.1 * np.random.default_rng(batch).standard_normal((batch, n))).astype(np.float32)
    return {"waveform": wav, "lengths": np.full(batch, n, np.int64)}


def measure(runner: GraphRunner, batch: int, budget_s: float, min_calls: int = 3
            ) -> list[float]:
    """Seconds per call of one batch, for `budget_s` (at least `min_calls`), after a warm-up."""
    inputs = feeds(batch)
    runner.run(inputs)  # warm-up: allocations, kernel choice
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < budget_s:
        t = time.perf_counter()
        runner.run(inputs)
        times.append(time.perf_counter() - t)
    return times


def print_pack(name: str, pack_dir: Path, args: argparse.Namespace) -> None:
    runner = open_runner(pack_dir, args.threads, args.provider)
    base_rate = 0.0
    for batch in BATCHES:
        times = measure(runner, batch, args.budget)
        median = statistics.median(times)
        rate = batch / median
        base_rate = base_rate or rate
        print(f"| {name} | {runner.provider} | {batch} | {len(times)} | {median * 1000:9.1f} | "
              f"{rate:8.2f} | {rate * CLIP_S:8.1f} | {rate / base_rate:5.2f}x |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-dir", type=Path, default=Path("build/emotion2vec-tiny"))
    parser.add_argument("--base-dir", type=Path, default=Path("build/emotion2vec-base"))
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per batch size")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    packs = [("tiny", ensure_pack(args.tiny_dir, "tiny"))]
    if not args.skip_base:
        packs.append(("random-real base", ensure_pack(args.base_dir, "base")))
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, threads {args.threads}, {CLIP_S:g} s clips, "
          f"median of the calls made in {args.budget:g} s per batch size")
    print("| pack | provider | batch | calls | median ms/batch | clips/s | audio s/s "
          "| vs batch 1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, path in packs:
        print_pack(name, path, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
