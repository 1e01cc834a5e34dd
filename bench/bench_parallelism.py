"""Batch size x parallelism of a pack's main graph: what `batch_workers` and the adaptive
batch cap are chosen from.

Raw ORT items/s (bench/raw_ceiling.py's loop) at every batch size, for one worker with
every core and for W workers sharing the cores, side by side in one run. Prints a
markdown table; the figures behind AUDIOSERVE_BATCH_WORKERS's default are in
bench/results/batch-sizing.md.

    .venv/bin/python -m bench.bench_parallelism models/bench-random-real/clap
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.raw_ceiling import ceiling
from service.pipelines.loader import cpu_cores
from service.runtime.packs import load_pack


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--workers", type=int, default=2, help="the parallel configuration")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2, help="alternate the configurations")
    args = p.parse_args()
    kind = load_pack(args.pack).kind
    cores = cpu_cores()
    configs = [(1, cores), (args.workers, max(1, cores // args.workers))]
    rates: dict[tuple[int, int, int], list[float]] = {}
    unit = ""
    for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both
        for workers, threads in configs:
            for point in ceiling(kind, args.pack, args.batch, args.seconds, threads, workers):
                rates.setdefault((workers, threads, point.batch), []).append(point.items_per_s)
                unit = point.unit
    print(f"{kind}, {cores} cores, {unit}/s (mean of {args.rounds} interleaved rounds)\n")
    head = [f"{w} worker(s) x {t} thread(s)" for w, t in configs]
    print("| batch | " + " | ".join(head) + " | ratio |")
    print("|---|" + "---|" * (len(configs) + 1))
    for b in args.batch:
        row = [sum(rates[(w, t, b)]) / args.rounds for w, t in configs]
        print(f"| {b} | " + " | ".join(f"{r:.1f}" for r in row) + f" | {row[1] / row[0]:.2f} |")


if __name__ == "__main__":
    main()
