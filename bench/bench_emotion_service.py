"""POST /emotion under wrk: batching on vs off, length bucketing vs none, at concurrency 1/8/32.

    .venv/bin/python bench/bench_emotion_service.py [--random-real] [--duration 15]

Bodies are real speech (`../shared/data/speech`, generated tones when absent) of mixed
lengths (2, 4, 8, 12 s, FLAC, see bench/bodies.py). Each configuration gets its own server
process (`python -m service`, only the emotion2vec pack); every figure is measured in this
run, and the last table gives each configuration's requests/s as a ratio to batching off.
Padding is the batcher's own figure (`audioserve_batch_padding_fraction`: the share of
each executed batch, size x longest, that is padding), averaged over the run's batches.
Built on the bench helpers (bench/server.py, bench/wrk_load.py, bench/prom.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import prom
from bench.bodies import build_emotion, speech_source
from bench.load_result import LoadResult
from bench.packs import ensure_pack
from bench.server import audioserve
from bench.wrk_load import run_wrk

QUEUE = "emotion2vec"
CONFIGS = {
    "on": {"max_batch_size": "8", "bucket_by_length": "true"},
    "no-bucket": {"max_batch_size": "8", "bucket_by_length": "false"},
    "off": {"max_batch_size": "1", "bucket_by_length": "true"},
}


@dataclass(frozen=True)
class Row:
    config: str
    load: LoadResult
    mean_batch: float
    padding: float


def padding_fraction(before: str, after: str) -> float:
    d = prom.delta(prom.snapshot(before), prom.snapshot(after))
    total = count = 0.0
    for (metric, labels), value in d.items():
        if dict(labels).get("queue") != QUEUE:
            continue
        if metric == "audioserve_batch_padding_fraction_sum":
            total += value
        elif metric == "audioserve_batch_padding_fraction_count":
            count += value
    return total / count if count else math.nan


def run_config(name: str, models_dir: Path, bodies: Path, args: argparse.Namespace,
               log_dir: Path) -> list[Row]:
    settings = {"models": "emotion2vec", "max_wait_ms": str(args.max_wait_ms),
                "max_queue": "1024", "request_timeout_s": "300", **CONFIGS[name]}
    rows = []
    with audioserve(f"emotion-{name}", models_dir, settings, log_dir=log_dir) as server:
        server.start()
        for c in args.concurrency:
            before = server.metrics_text()
            load = run_wrk(server.url + "/emotion", bodies, "emotion", c, args.duration,
                           timeout_s=300)
            after = server.metrics_text()
            figures = [q for q in prom.all_queue_figures(before, after) if q.queue == QUEUE]
            mean_batch = figures[0].mean_batch if figures else math.nan
            row = Row(name, load, mean_batch, padding_fraction(before, after))
            rows.append(row)
            print_row(row)
    return rows


def print_row(r: Row) -> None:
    errors = r.load.non_2xx() or ""
    print(f"| {r.config} | {r.load.concurrency} | {r.load.ok_rps:7.2f} | {r.load.p50_ms:8.0f} | "
          f"{r.load.p99_ms:8.0f} | {r.mean_batch:5.2f} | {r.padding:5.3f} | {errors} |",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="holds <dir>/emotion2vec (default: build/bench-emotion-{tiny,base})")
    parser.add_argument("--random-real", action="store_true", help="the base-size pack")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    size = "base" if args.random_real else "tiny"
    models_dir = args.models_dir or Path(f"build/bench-emotion-{size}")
    status = ensure_pack("emotion2vec", models_dir, random_real=args.random_real)
    if not status.ready:
        print(f"no pack: {status.note}")
        return 1
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        bodies = build_emotion(Path(tmp)).folder
        print(f"{size} pack ({status.note}), bodies: {speech_source()}, 2/4/8/12 s; "
              f"{args.duration:g} s per point, max_wait_ms {args.max_wait_ms:g}")
        print("| config | conc. | req/s | p50 ms | p99 ms | mean batch | padding | non-2xx |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = [r for name in args.configs
                for r in run_config(name, models_dir, bodies, args, Path(tmp) / "logs")]
    if "off" in args.configs:
        print("\n| config | " + " | ".join(f"c={c} req/s vs off" for c in args.concurrency) + " |")
        print("| --- |" + " --- |" * len(args.concurrency))
        off = {r.load.concurrency: r.load.ok_rps for r in rows if r.config == "off"}
        for name in args.configs:
            ratios = [next(r.load.ok_rps for r in rows
                           if r.config == name and r.load.concurrency == c) / off[c]
                      if off.get(c) else math.nan for c in args.concurrency]
            print(f"| {name} | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
