"""The HTTP edge, side by side: the same app behind each candidate server, measured on
the connection attacks (bench/hostile_http.py), the hostile corpus (bench/hostile.py, the
cases without a key) and the load benchmark (wrk on /classify, c=8 and 32).

    .venv/bin/python -m bench.bench_edge [--before-root DIR] [--only NAME ...]
        [--models-dir models/bench-tiny] [--out bench/results/hardening]

Candidates: this branch's `python -m service` (uvicorn's h11 protocol, GuardedProtocol);
`--before-root`, a checkout of the previous service (uvicorn's httptools protocol with
the old GuardedProtocol); Hypercorn (h11) and Granian (hyper) serving the same app
(bench/edge_apps.py) with their default limits. One server at a time; the numbers of one
run are comparable with each other only. Written up in docs/hardening.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.bench_hostile import _reset_peak
from bench.healthz_guard import healthz_guard
from bench.hostile import send_case
from bench.hostile_corpus import corpus
from bench.hostile_http import ATTACKS
from bench.prom import snapshot
from bench.server import REPO, ServerProcess, free_port, with_pythonpath
from bench.wrk_load import run_wrk

SETTINGS = {"AUDIOSERVE_MODELS": "clap,emotion2vec", "AUDIOSERVE_LOG_LEVEL": "warning",
            "AUDIOSERVE_WRITE_TIMEOUT_S": "5"}


@dataclass
class Candidate:
    name: str
    attacks: dict[str, dict[str, object]] = field(default_factory=dict)
    corpus_met: int = 0
    corpus_total: int = 0
    corpus_misses: list[str] = field(default_factory=list)
    load: dict[int, dict[str, float]] = field(default_factory=dict)


def command(name: str, port: int, before_root: Path | None) -> tuple[list[str], Path]:
    py = sys.executable
    if name == "hypercorn":
        return [py, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                "bench.edge_apps:app"], REPO
    if name == "granian":
        return [py, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--http", "1", "--workers", "1",
                "bench.edge_apps:app"], REPO
    root = before_root if name == "uvicorn-httptools" and before_root else REPO
    return [py, "-m", "service"], root


def start(name: str, models_dir: Path, before_root: Path | None, log_dir: Path) -> ServerProcess:
    port = free_port()
    cmd, root = command(name, port, before_root)
    env = {**SETTINGS, "AUDIOSERVE_MODELS_DIR": str(models_dir.resolve()),
           "AUDIOSERVE_HOST": "127.0.0.1", "AUDIOSERVE_PORT": str(port),
           "PYTHONPATH": with_pythonpath(root) + f":{REPO}"}
    log_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(name, cmd, port, env, cwd=root,
                         log_path=log_dir / f"edge-{name}.log").start()


def measure(name: str, models_dir: Path, before_root: Path | None, log_dir: Path,
            bodies_dir: Path, seconds: float) -> Candidate:
    result = Candidate(name)
    with start(name, models_dir, before_root, log_dir) as server:
        cases = [c for c in corpus() if not c.api_key]
        result.corpus_total = len(cases)
        for case in cases:
            answer = send_case("127.0.0.1", server.port, case, timeout_s=10)
            if answer.status in case.expect and answer.seconds < 1.0:
                result.corpus_met += 1
            else:
                result.corpus_misses.append(f"{case.name}: {answer.status} "
                                            f"{answer.seconds:.2f}s")
        for concurrency in (8, 32):
            load = run_wrk(server.url + "/classify", bodies_dir, "classify", concurrency,
                           seconds, timeout_s=30)
            result.load[concurrency] = {"ok_rps": round(load.ok_rps, 1),
                                        "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
                                        "non_2xx": sum(load.non_2xx().values())}
            print(f"{name}: classify c={concurrency}: {result.load[concurrency]}", flush=True)
        for attack in (a for a in ATTACKS if not a.api_key):
            resettable = _reset_peak(server.pid)
            before = server.rss_mb()
            answered = answered_requests(server)
            with healthz_guard(server.url, check=False) as guard:
                outcome = attack.run("127.0.0.1", server.port)
            answered = answered_requests(server) - answered
            peak = server.peak_rss_mb() if resettable else server.rss_mb()
            figures: dict[str, object] = {
                       **outcome.figures, "answered_by_app": int(answered), "met": outcome.met,
                       "healthz_worst_ms": round(guard.worst_s * 1000, 1),
                       "healthz_failures": len(guard.failures),
                       "rss_growth_mb": round(max(0.0, peak - before), 1),
                       "rss_after_mb": round(server.rss_mb() - before, 1)}
            result.attacks[attack.name] = figures
            print(f"{name}: {attack.name}: {figures}", flush=True)
            time.sleep(1)  # let the last attack's sockets go before the next
    return result


def answered_requests(server: ServerProcess) -> float:
    """Requests the app has answered (its own counter; the /healthz guard's included)."""
    return sum(v for (name, _), v in snapshot(server.metrics_text()).items()
               if name == "audioserve_requests_total")


def report(results: list[Candidate], out: Path) -> Path:
    stamp = time.strftime("%Y-%m-%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}-edge.json").write_text(json.dumps([asdict(r) for r in results],
                                                       indent=1))
    lines = [f"# The HTTP edge, side by side ({stamp})", "",
             "`python -m bench.bench_edge`: the same app (CLAP + Emotion2Vec tiny packs) "
             "behind each server, one at a time.", "",
             "| | " + " | ".join(r.name for r in results) + " |",
             "| --- |" + " --- |" * len(results)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("hostile corpus met", [f"{r.corpus_met}/{r.corpus_total}" for r in results])
    for c in (8, 32):
        row(f"classify c={c} ok req/s (p50 / p99 ms)",
            [f"{r.load[c]['ok_rps']:g} ({r.load[c]['p50_ms']:.0f} / {r.load[c]['p99_ms']:.0f})"
             if c in r.load else "-" for r in results])
    for attack in (a for a in ATTACKS if not a.api_key):
        cells = []
        for r in results:
            f = r.attacks.get(attack.name, {})
            detail = ", ".join(f"{k}={v}" for k, v in f.items()
                               if k not in ("met", "healthz_failures"))
            cells.append(("met" if f.get("met") else "**not met**") + f": {detail}")
        row(attack.name, cells)
    lines += ["", "Corpus misses:"]
    for r in results:
        lines.append(f"- {r.name}: " + ("; ".join(r.corpus_misses) or "none"))
    path = out / f"{stamp}-edge.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models/bench-tiny")
    parser.add_argument("--bodies-dir", type=Path, default=REPO / "bench/bodies/classify")
    parser.add_argument("--before-root", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/hardening")
    args = parser.parse_args()
    names = ["uvicorn-h11", "uvicorn-httptools", "hypercorn", "granian"]
    if args.before_root is None:
        names.remove("uvicorn-httptools")
    results = [measure(n, args.models_dir, args.before_root, args.out / "logs",
                       args.bodies_dir, args.seconds)
               for n in names if args.only is None or n in args.only]
    print(f"report: {report(results, args.out)}")


if __name__ == "__main__":
    main()
