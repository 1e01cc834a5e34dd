"""The hostile corpus against the live service: per case its status, time to answer, the
worst /healthz latency while it ran, and the server's peak RSS growth.

    .venv/bin/python -m bench.bench_hostile [--models-dir models] [--out bench/results/hardening]

The service runs as its own process (`python -m service`, demo packs), once open and
once with an API key (the auth cases). Peak RSS growth per case: the kernel's high-water
mark (VmHWM) is reset before the case (`/proc/<pid>/clear_refs` = 5) and read after it,
against the RSS before it. Targets (issue 13): every case a 4xx or a valid 2xx in under
1 s; no /healthz stall over 100 ms; peak RSS growth under 300 MB for any one request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import hostile_tts
from bench.healthz_guard import healthz_guard
from bench.hostile import Case, corpus, send_case
from bench.server import REPO, ServerProcess, audioserve, memory_mb

ANSWER_S, HEALTHZ_S, RSS_MB = 1.0, 0.1, 300.0


@dataclass(frozen=True)
class CaseResult:
    name: str
    klass: str
    path: str
    bytes: int
    status: int
    expected: bool
    seconds: float
    healthz_worst_ms: float
    healthz_failures: int
    rss_growth_mb: float

    @property
    def met(self) -> bool:
        return (self.expected and self.seconds < ANSWER_S and self.healthz_failures == 0
                and self.healthz_worst_ms <= HEALTHZ_S * 1000 and self.rss_growth_mb < RSS_MB)


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(server: ServerProcess, case: Case) -> CaseResult:
    resettable = _reset_peak(server.pid)
    before = server.rss_mb()
    with healthz_guard(server.url, check=False) as guard:
        answer = send_case("127.0.0.1", server.port, case)
        time.sleep(0.05)  # a sample after the answer too
    peak = server.peak_rss_mb() if resettable else max(server.rss_mb(), before)
    return CaseResult(case.name, case.klass, case.path, len(case.body), answer.status,
                      answer.status in case.expect, round(answer.seconds, 4),
                      round(guard.worst_s * 1000, 1), len(guard.failures),
                      round(max(0.0, peak - before), 1))


def tts_cases(models_dir: Path) -> list[Case]:
    """The TTS half of the corpus (bench/hostile_tts.py) for the demo pack's speakers."""
    stats = json.loads((models_dir / "chattts/manifest.json").read_text())
    dim = int(stats["constants"].get("spk_emb_dim", 768))
    return hostile_tts.cases(dim)


def report(results: list[CaseResult], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    (out / f"{stamp}.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    met = sum(r.met for r in results)
    lines = [
        f"# Hostile corpus, {stamp}", "",
        "`python -m bench.bench_hostile`: each case on a fresh connection to `python -m "
        "service` (demo packs), /healthz sampled every 20 ms while it runs.", "",
        f"**{met} of {len(results)} cases meet every target** (expected status, answer "
        f"< {ANSWER_S:g} s, /healthz <= {HEALTHZ_S * 1000:g} ms, peak RSS growth < "
        f"{RSS_MB:g} MB).", "",
        f"- slowest answer: {max(r.seconds for r in results) * 1000:.0f} ms",
        f"- worst /healthz: {max(r.healthz_worst_ms for r in results):.0f} ms",
        f"- largest peak RSS growth: {max(r.rss_growth_mb for r in results):.0f} MB", "",
        "| class | case | bytes | status | answer ms | worst /healthz ms | peak RSS +MB | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(f"| {r.klass} | {r.name} | {r.bytes:,} | {r.status} | "
                     f"{r.seconds * 1000:.0f} | {r.healthz_worst_ms:.0f} | "
                     f"{r.rss_growth_mb:.0f} | {'yes' if r.met else '**no**'} |")
    path = out / f"{stamp}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/hardening")
    args = parser.parse_args()
    cases = corpus([lambda: tts_cases(args.models_dir)])
    logs = args.out / "logs"
    results = []
    with contextlib.ExitStack() as stack:
        servers = {
            False: stack.enter_context(audioserve("hostile", args.models_dir, {},
                                                  log_dir=logs).start()),
            True: stack.enter_context(audioserve("hostile-key", args.models_dir,
                                                 {"api_key": "bench-key", "models": "clap"},
                                                 log_dir=logs).start()),
        }
        print(f"server RSS at start: {memory_mb(servers[False].pid):.0f} MB")
        for case in cases:
            result = run_case(servers[case.api_key], case)
            results.append(result)
            print(f"{'ok ' if result.met else 'NO '} {result.status} "
                  f"{result.seconds * 1000:6.0f} ms  healthz {result.healthz_worst_ms:4.0f} ms"
                  f"  +{result.rss_growth_mb:4.0f} MB  {case.klass}: {case.name}")
    print(f"report: {report(results, args.out)}")


if __name__ == "__main__":
    main()
