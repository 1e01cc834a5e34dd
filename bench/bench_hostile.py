"""The hostile corpus against the live service: per case its status, time to answer, the
worst /healthz latency while it ran, and the server's peak RSS growth.

    .venv/bin/python -m bench.bench_hostile [--cluster] [--models-dir models]
        [--out bench/results/hardening]

The service runs as its own process (`python -m service`, demo packs; with `--cluster`,
`python -m service.cluster` on a local Ray cluster of its own, one replica per model),
once open and once with an API key (the auth cases). Peak RSS growth per case: the
kernel's high-water mark (VmHWM) of every process of the server's tree is reset before the
case (`/proc/<pid>/clear_refs` = 5) and their sum read after it, against the RSS before.
Targets (issue 13): every case a 4xx or a valid 2xx in under 1 s; no /healthz stall over
100 ms; peak RSS growth under 300 MB for any one request.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import hostile_output, hostile_tts
from bench.cluster import SERVER_COMMAND, one_or_cluster
from bench.healthz_guard import healthz_guard
from bench.hostile import Case, corpus, send_case
from bench.server import REPO, ServerProcess, memory_mb, process_tree

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
    """Reset the peak RSS of the server and every process under it (a cluster's replicas
    are), so the peak after a case is that case's."""
    try:
        for member in process_tree(pid):
            Path(f"/proc/{member}/clear_refs").write_text("5")
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
    return [*hostile_tts.cases(dim), *hostile_output.tts_cases()]


def report(results: list[CaseResult], out: Path, cluster: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M") + ("-cluster" if cluster else "")
    (out / f"{stamp}.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    met = sum(r.met for r in results)
    lines = [
        f"# Hostile corpus, {stamp}", "",
        "`python -m bench.bench_hostile`: each case on a fresh connection to "
        f"`{SERVER_COMMAND[cluster]}` (demo packs), /healthz sampled every 20 ms while it "
        "runs; RSS summed over the server's process tree.", "",
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
    parser.add_argument("--cluster", action="store_true",
                        help="against `python -m service.cluster` (a local Ray cluster)")
    args = parser.parse_args()
    cases = corpus([lambda: tts_cases(args.models_dir)])
    logs = args.out / "logs"
    configs = {False: ("hostile", {}), True: ("hostile-key", {"api_key": "bench-key",
                                                              "models": "clap"})}
    results: dict[str, CaseResult] = {}
    for keyed, (name, settings) in configs.items():  # one server at a time
        with one_or_cluster(name, args.models_dir, settings, log_dir=logs,
                            cluster=args.cluster).start() as server:
            print(f"{name}: server RSS at start: {memory_mb(server.pid):.0f} MB")
            for case in (c for c in cases if c.api_key == keyed):
                result = results[case.name] = run_case(server, case)
                print(f"{'ok ' if result.met else 'NO '} {result.status} "
                      f"{result.seconds * 1000:6.0f} ms  healthz "
                      f"{result.healthz_worst_ms:4.0f} ms  +{result.rss_growth_mb:4.0f} MB  "
                      f"{case.klass}: {case.name}")
    ordered = [results[c.name] for c in cases]
    print(f"report: {report(ordered, args.out, args.cluster)}")


if __name__ == "__main__":
    main()
