"""Raw ceiling of the CLAP audio graph: ONNX Runtime items/s at batch 1, 4, 8, 16.

No service, no batcher: one session (opened by the service's own factory, so provider and
threads are the service's) fed ready-made [B,1,1001,64] features. The service benchmark
(bench/wrk) compares its requests/s against these figures.

    python bench/bench_clap_raw.py --tiny models/clap-tiny --real models/clap-random-real

A pack folder that does not exist is exported first (`--real` takes a minute or two).
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

BATCHES = (1, 4, 8, 16)


def ensure_pack(path: Path, kind: str) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from export import clap

    print(f"exporting the {kind} CLAP pack into {path} ...", flush=True)
    (clap.build_tiny if kind == "tiny" else clap.build_random_real)(path)
    return path


def features(batch: int, frames: int, mels: int) -> dict[str, np.ndarray]:
    """Log-mel-like input for the audio graph (the values do not change its speed)."""
    rng = np.random.default_rng(0)
    return {"input_features": (rng.standard_normal((batch, 1, frames, mels)) * 20 - 40)
            .astype(np.float32)}


def measure(runner: GraphRunner, batch: int, frames: int, mels: int,
            min_seconds: float, min_runs: int) -> tuple[float, float]:
    """(items/s, median ms per batch) over at least `min_runs` runs and `min_seconds`."""
    feeds = features(batch, frames, mels)
    runner.run(feeds)  # warm-up (allocations, kernel choice)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return batch * len(times) / total, statistics.median(times) * 1000.0


def bench_pack(name: str, root: Path, args: argparse.Namespace) -> list[tuple[str, int, float,
                                                                              float]]:
    pack = load_pack(root, expected_kind="clap")
    path, _ = pack.graph("audio", "fp32")
    runtime = RuntimeConfig(provider=args.provider, intra_op_threads=args.threads)
    runner = GraphRunner(create_session(path, runtime))
    c = pack.constants
    rows = []
    for batch in args.batches:
        rate, ms = measure(runner, batch, c["frames"], c["n_mels"], args.seconds, args.runs)
        rows.append((name, batch, rate, ms))
        print(f"  {name:<12} batch {batch:>3}: {rate:8.2f} items/s  {ms:9.2f} ms/batch",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=Path, default=Path("models/clap-tiny"))
    parser.add_argument("--real", type=Path, default=None,
                        help="random-real pack folder (exported when missing); omit to skip")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per point")
    parser.add_argument("--runs", type=int, default=3, help="minimum runs per point")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)

    packs = [("tiny", ensure_pack(args.tiny, "tiny"))]
    if args.real is not None:
        packs.append(("random-real", ensure_pack(args.real, "random-real")))
    rows = []
    for name, root in packs:
        print(f"{name}: {root}", flush=True)
        rows += bench_pack(name, root, args)

    print("\n| pack | batch | items/s | ms/batch | items/s vs batch 1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, batch, rate, ms in rows:
        base = min((row for row in rows if row[0] == name), key=lambda row: row[1])[2]
        print(f"| {name} | {batch} | {rate:.2f} | {ms:.2f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
