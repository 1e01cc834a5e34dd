"""Many large uploads at once (issue 21, item 9): peak RSS growth of the server, statuses
and the worst /healthz, with the process-wide body budget and without it (one huge
budget: the old behaviour), in the same run.

    .venv/bin/python -m bench.bench_body_budget [--uploads 64] [--mb 25]

Each upload is a base64 JSON `/classify` body of `--mb` MB of zero bytes (35 MB on the
wire at 25), sent on its own connection, all at once; the audio is not audio (415 when a
body gets through), so what is measured is reading and parsing, not the model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.bench_hostile import _reset_peak
from bench.healthz_guard import healthz_guard
from bench.hostile import JSON_TYPE, Case, audio_json, send_case
from bench.server import REPO, audioserve

HUGE = str(2**40)


def run(models_dir: Path, budget: str | None, uploads: int, mb: int) -> str:
    body = audio_json(b"\0" * (mb * 2**20), '"labels": ["a"]')
    case = Case("big upload", "21.9", "/classify", body, JSON_TYPE)
    settings = {"models": "clap", "max_upload_bytes": str(64 * 2**20)}
    if budget is not None:
        settings["max_body_bytes_in_flight"] = budget
    name = f"body-budget-{'off' if budget == HUGE else 'default'}"
    with audioserve(name, models_dir, settings, log_dir=Path(tempfile.gettempdir())
                    ).start() as server:
        _reset_peak(server.pid)
        before = server.rss_mb()
        started = time.perf_counter()
        with healthz_guard(server.url, check=False) as guard, \
                ThreadPoolExecutor(uploads) as pool:
            answers = list(pool.map(lambda _: send_case("127.0.0.1", server.port, case,
                                                        timeout_s=120), range(uploads)))
        took = time.perf_counter() - started
        growth = server.peak_rss_mb() - before
    statuses = Counter(a.status for a in answers)
    return (f"{name}: {uploads} x {len(body) / 1e6:.1f} MB bodies: peak RSS +{growth:.0f} "
            f"MB, statuses {dict(statuses)}, all answered in {took:.1f} s, worst /healthz "
            f"{guard.worst_s * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--mb", type=int, default=25)
    args = parser.parse_args()
    for budget in (HUGE, None):
        print(run(args.models_dir, budget, args.uploads, args.mb), flush=True)


if __name__ == "__main__":
    main()
