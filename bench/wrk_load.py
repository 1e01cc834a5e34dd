"""Closed-loop load with wrk (`bench/wrk/post_bodies.lua`); without wrk, the same points
from bench/closed_loop.py.

Closed loop: each of `c` connections sends its next request when the last one returns, so
the offered load adapts to the server — right for throughput at a given concurrency, wrong
for tail latency under overload (coordinated omission: see bench/openloop.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench.load_result import LoadResult

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post_bodies.lua"


def ensure_wrk() -> str:
    """Path to wrk, installing Debian's package when it is missing (the bench's setup).
    "" where there is neither wrk nor apt-get (the GPU check's machine reaches no package
    registry): closed-loop points then use bench/closed_loop.py."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.environ.get("AUDIOSERVE_BENCH_CLIENT") == "python":
        return ""
    subprocess.run([apt, "install", "-y", "wrk"], check=False)
    found = shutil.which("wrk")
    if found is None:
        subprocess.run([apt, "update"], check=False)
        subprocess.run([apt, "install", "-y", "wrk"], check=True)
        found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("could not install wrk (apt-get install -y wrk)")
    return found


def parse_wrk_output(stdout: str, endpoint: str, concurrency: int) -> LoadResult:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no WRK_JSON line:\n{stdout[-2000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    lat = {k: float(v) for k, v in data["latency_ms"].items()}
    ok_latencies = data["requests"] > 0
    return LoadResult(
        endpoint=endpoint, mode="closed", concurrency=concurrency, rate=0.0,
        duration_s=float(data["duration_s"]), requests=int(data["requests"]),
        status={int(k): int(v) for k, v in data["status"].items()},
        p50_ms=lat["p50"] if ok_latencies else float("nan"),
        p90_ms=lat["p90"] if ok_latencies else float("nan"),
        p99_ms=lat["p99"] if ok_latencies else float("nan"),
        max_ms=lat["max"] if ok_latencies else float("nan"),
        retry_after_503=int(data["retry_after_503"]),
        socket_errors=sum(int(v) for v in data["socket_errors"].values()),
    )


def run_wrk(url: str, bodies_dir: Path, endpoint: str, concurrency: int, duration_s: float,
            *, threads: int = 2, timeout_s: float = 60.0) -> LoadResult:
    """One closed-loop point. wrk's own timeout is raised from 2 s so slow answers are
    measured instead of dropped; the subprocess is bounded by duration + timeout."""
    if not url.startswith("http://127.0.0.1"):
        raise ValueError("the bench loads loopback only")
    wrk = ensure_wrk()
    if not wrk:
        from bench.closed_loop import run_closed

        return run_closed(url, bodies_dir, endpoint, concurrency, duration_s,
                          timeout_s=timeout_s)
    threads = max(1, min(threads, concurrency))
    cmd = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
           f"--timeout={int(timeout_s)}s", "-s", str(WRK_SCRIPT), url, "--", str(bodies_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=duration_s + timeout_s + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-2000:]}")
    return parse_wrk_output(out.stdout, endpoint, concurrency)
