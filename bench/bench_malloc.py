"""Pinned malloc thresholds vs glibc's defaults, side by side (service/runtime/allocator.py).

Starts `python -m service` with the CLAP pack alone, twice per round (pinned, default),
and loads /classify with wrk at one concurrency. Per configuration it prints requests/s,
minor page faults per request and the share of the server's CPU time spent in the kernel,
read from /proc for the measured window only (after a warm-up). Rounds interleave the two
configurations, so drift on a shared machine hits both.

Run from the repository root (tiny pack by default; built if missing):
    .venv/bin/python -m bench.bench_malloc [--random-real] [--rounds 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import bodies as bodies_mod
from bench.packs import ensure_pack
from bench.server import REPO, audioserve
from bench.wrk_load import run_wrk


@dataclass(frozen=True)
class Sample:
    rps: float
    faults_per_request: float
    kernel_share: float


def proc_counters(pid: int) -> tuple[int, int, int]:
    """(minor faults, user ticks, system ticks) of one process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[11]), int(fields[12])


def measure(models_dir: Path, pinned: bool, endpoint: bodies_mod.Endpoint,
            concurrency: int, seconds: float, log_dir: Path) -> Sample:
    settings = {"models": "clap", "pin_malloc_thresholds": str(pinned).lower()}
    with audioserve(f"malloc-{'pinned' if pinned else 'default'}", models_dir, settings,
                    log_dir=log_dir) as server:
        server.start()
        url = server.url
        run_wrk(url, endpoint.folder, endpoint.name, concurrency, 3)  # warm-up
        f0, u0, s0 = proc_counters(server.pid)
        load = run_wrk(url, endpoint.folder, endpoint.name, concurrency, seconds)
        f1, u1, s1 = proc_counters(server.pid)
    ticks = (u1 - u0) + (s1 - s0)
    return Sample(load.ok_rps, (f1 - f0) / max(load.requests, 1),
                  (s1 - s0) / ticks if ticks else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--random-real", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    flavour = "random-real" if args.random_real else "tiny"
    models_dir = REPO / "models" / f"bench-{flavour}"
    status = ensure_pack("clap", models_dir, random_real=args.random_real)
    if not status.ready:
        raise SystemExit(f"no CLAP pack: {status.note}")
    endpoint = bodies_mod.build(REPO / "bench" / "bodies", ["classify"])["classify"]
    samples: dict[bool, list[Sample]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(args.rounds):
            for pinned in (True, False):
                samples[pinned].append(measure(models_dir, pinned, endpoint,
                                               args.concurrency, args.seconds, Path(logs)))
    print(f"## /classify, CLAP {flavour} pack alone, wrk c={args.concurrency}, "
          f"{args.seconds:g} s x {args.rounds} interleaved rounds (median)")
    print(f"{'malloc':<10} {'req/s':>8} {'faults/req':>11} {'kernel CPU':>11}")
    medians = {}
    for pinned, rows in samples.items():
        rps = statistics.median(s.rps for s in rows)
        medians[pinned] = rps
        print(f"{'pinned' if pinned else 'default':<10} {rps:>8.1f} "
              f"{statistics.median(s.faults_per_request for s in rows):>11.0f} "
              f"{statistics.median(s.kernel_share for s in rows):>10.0%}")
    print(f"pinned / default: {medians[True] / medians[False]:.2f}x req/s")


if __name__ == "__main__":
    main()
