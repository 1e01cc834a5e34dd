"""POST /emotion under wrk: batching on vs off, length bucketing vs none, at concurrency 1/8/32.

    .venv/bin/python bench/bench_emotion_service.py [--random-real] [--duration 15]

Bodies are real speech (`../shared/data/speech`, generated tones when absent) of mixed
lengths (2, 4, 8, 12 s, FLAC, see bench/bodies.py). Each configuration gets its own server
process (`python -m service`, only the emotion2vec pack); every figure is measured in this
run, and the last table gives each configuration's requests/s as a ratio to batching off.
Padding is the batcher's own figure (`audioserve_batch_padding_fraction`: the share of
each executed batch, size x longest, that is padding), averaged over the run's batches.
Built on the bench helpers (bench/server.py, bench/wrk_load.py, bench/prom.py).

`--memory` (docs/hardening.md, "Memory per request"): greedy /emotion requests of 300 s
(the duration limit, real speech joined end to end) against default settings, with the
batch budget (`EMOTION_MAX_BATCH_SECONDS`, default) and without it (`unbounded`: one huge
budget, the old batch forming) or, with `--before-root`, the service of another checkout
instead. Per configuration and round, on a fresh server: one greedy request alone, then 8
at once (all admitted, as a freshly started server admits them); for each, the server's
peak RSS growth (VmHWM reset before, as bench_hostile does), statuses and time. Then, on
another fresh server, wrk on the short bodies at `--concurrency`, so a throughput
regression shows beside the memory. The batch-size cap the sizer learnt at start is
printed for both: without a budget it decides how many 30 s chunks share a batch.
`--long-requests 0` runs the short clips only; `--set KEY=VALUE` changes a setting for
every configuration (`adaptive_batch_size=false`: batches filled to MAX_BATCH_SIZE, where
the budget bites hardest on short clips).

    .venv/bin/python bench/bench_emotion_service.py --memory --models-dir \
        models/bench-random-real [--before-root ../main] --concurrency 8 --duration 60
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import prom
from bench.bench_hostile import _reset_peak
from bench.bodies import BOUNDARY, build_emotion, flac_bytes, multipart, speech_clip, speech_source
from bench.hostile import Case, send_case
from bench.load_result import LoadResult
from bench.packs import ensure_pack
from bench.server import REPO, ServerProcess, audioserve, http_get
from bench.wrk_load import run_wrk

QUEUE = "emotion2vec"
CONFIGS = {
    "on": {"max_batch_size": "8", "bucket_by_length": "true"},
    "no-bucket": {"max_batch_size": "8", "bucket_by_length": "false"},
    "off": {"max_batch_size": "1", "bucket_by_length": "true"},
}
LONG_S = 300.0
MEMORY_CONFIGS = {  # --memory: everything else at its default
    "unbounded": {"emotion_max_batch_seconds": "1e6"},  # the batch forming before the budget
    "budget": {},
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


def greedy(server: ServerProcess, case: Case, requests: int) -> str:
    """`requests` copies of `case` at once: the server's peak RSS growth, the statuses and
    the time until the last answer."""
    _reset_peak(server.pid)
    before = server.rss_mb()
    started = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: send_case("127.0.0.1", server.port, case,
                                                    timeout_s=600), range(requests)))
    took = time.perf_counter() - started
    growth = server.peak_rss_mb() - before
    statuses = ", ".join(f"{n} x {s}" for s, n in sorted(Counter(a.status for a in answers
                                                                 ).items()))
    return f"+{growth:,.0f} MB ({statuses}, {took:.0f} s)"


def size_cap(server: ServerProcess) -> str:
    """The batch-size cap the adaptive sizer learnt at start (GET /v1/models/emotion2vec):
    without a budget it decides how many 30 s chunks share a batch."""
    status, body = http_get(server.url + "/v1/models/emotion2vec")
    batching = (json.loads(body).get("batching") or {}) if status == 200 else {}
    return str(batching.get("size_limit", "?"))


def run_memory(name: str, models_dir: Path, bodies: Path, long_case: Case,
               args: argparse.Namespace, log_dir: Path) -> None:
    """One greedy request alone, then `--long-requests` at once, on a fresh server (its
    admission gate has seen one request finish, too few to predict from, so it admits
    them all, as a server just started would an attacker's); wrk on the short clips on
    another fresh server (after the greedy ones, the gate would refuse them)."""
    root = args.before_root if name == "before" else REPO
    settings = {"models": "emotion2vec", **dict(kv.split("=", 1) for kv in args.set),
                **MEMORY_CONFIGS.get(name, {})}
    idle, caps, one, many = math.nan, [], "-", "-"
    if args.long_requests:
        with audioserve(f"emotion-memory-{name}", models_dir, settings, log_dir=log_dir,
                        service_root=root).start() as server:
            idle, caps = server.rss_mb(), [size_cap(server)]
            one = greedy(server, long_case, 1)
            many = greedy(server, long_case, args.long_requests)
    short = []
    with audioserve(f"emotion-short-{name}", models_dir, settings, log_dir=log_dir,
                    service_root=root).start() as server:
        caps.append(size_cap(server))
        for c in args.concurrency:
            before = server.metrics_text()
            load = run_wrk(server.url + "/emotion", bodies, "emotion", c, args.duration,
                           timeout_s=300)
            figures = [q for q in prom.all_queue_figures(before, server.metrics_text())
                       if q.queue == QUEUE]
            mean_batch = figures[0].mean_batch if figures else math.nan
            errors = f", non-2xx {load.non_2xx()}" if load.non_2xx() else ""
            short.append(f"c={c}: {load.ok_rps:.2f} req/s, p50 {load.p50_ms:.0f} ms, "
                         f"batch {mean_batch:.2f}{errors}")
    print(f"| {name} | {idle:,.0f} | {' / '.join(caps)} | {one} | {many} | "
          f"{'; '.join(short)} |", flush=True)


def memory(models_dir: Path, bodies: Path, args: argparse.Namespace, tmp: Path) -> None:
    audio = flac_bytes(speech_clip(LONG_S, seed=11))
    long_case = Case(f"{LONG_S:g} s /emotion", "greedy", "/emotion", multipart(audio, []),
                     f"multipart/form-data; boundary={BOUNDARY}", expect=(200,))
    names = ["before" if args.before_root else "unbounded", "budget"]
    print(f"{len(long_case.body) / 1e6:.1f} MB body of {LONG_S:g} s ({speech_source()}); "
          f"short bodies 2/4/8/12 s, {args.duration:g} s per point; "
          f"{args.rounds} interleaved round(s)")
    print(f"| config | idle RSS MB | size cap | 1 x {LONG_S:g} s: peak RSS | then "
          f"{args.long_requests} x {LONG_S:g} s at once | short clips (wrk) |")
    print("| --- | ---: | ---: | --- | --- | --- |")
    for _ in range(args.rounds):
        for name in names:
            run_memory(name, models_dir, bodies, long_case, args, tmp / "logs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="holds <dir>/emotion2vec (default: build/bench-emotion-{tiny,base})")
    parser.add_argument("--random-real", action="store_true", help="the base-size pack")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS of greedy 300 s requests, budget vs none (see above)")
    parser.add_argument("--long-requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="with --memory")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="with --memory: settings for every configuration "
                        "(e.g. adaptive_batch_size=false)")
    parser.add_argument("--before-root", type=Path, default=None,
                        help="with --memory: this checkout's service instead of 'unbounded'")
    args = parser.parse_args()
    size = "base" if args.random_real else "tiny"
    models_dir = args.models_dir or Path(f"build/bench-emotion-{size}")
    status = ensure_pack("emotion2vec", models_dir, random_real=args.random_real)
    if not status.ready:
        print(f"no pack: {status.note}")
        return 1
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        bodies = build_emotion(Path(tmp)).folder
        if args.memory:
            memory(models_dir, bodies, args, Path(tmp))
            return 0
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
