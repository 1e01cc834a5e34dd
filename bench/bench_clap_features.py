"""CLAP's log-mel on the host (numpy) or inside the graph (`audio_waveform`): per 10 s
window, side by side, interleaved rounds. This is the figure `AUDIOSERVE_CLAP_FEATURES=auto`
follows on CPU.

    python -m bench.bench_clap_features                       # tiny pack (built if missing)
    python -m bench.bench_clap_features --pack models/clap-random-real --provider cuda

Each round runs the same B windows both ways: host = `service.audio.clap_features.log_mel` per
window + the `audio` graph; graph = the `audio_waveform` graph on the padded windows.
CPU ms is process CPU time (all threads); with one ORT thread on CPU it equals wall time,
which is how the service runs its CPU batch workers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.audio import clap_features as cf
from service.runtime.packs import ModelPack, load_pack
from service.runtime.sessions import GraphRunner, RuntimeConfig, open_graph


def _windows(cfg: cf.MelConfig, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(cfg.max_length_samples) / cfg.sample_rate
    out = []
    for _ in range(count):
        tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 8000, 3))
        out.append((0.1 * (tones / 3 + rng.standard_normal(t.size) * 0.3)).astype(np.float32))
    return out


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(pack: ModelPack, provider: str, batch: int, rounds: int, threads: int,
            precision: str = "fp32") -> dict[str, dict[str, float]]:
    """Median per-window wall and CPU ms of both ways, plus the host log-mel alone."""
    cfg = cf.MelConfig.from_constants(pack.constants)
    runtime = RuntimeConfig(provider=provider, intra_op_threads=threads, fixed_shapes=True)
    audio: GraphRunner = open_graph(pack.graph("audio", precision)[0], runtime)
    graph: GraphRunner = open_graph(pack.graph("audio_waveform", precision)[0], runtime)
    windows = _windows(cfg, batch)
    wav = np.stack(windows)

    def host_mel() -> np.ndarray:
        return np.stack([cf.log_mel(w, cfg)[None] for w in windows])

    def host() -> None:
        audio.run({"input_features": host_mel()})

    def in_graph() -> None:
        graph.run({"waveform": wav})

    samples: dict[str, list[tuple[float, float]]] = {"host": [], "graph": [], "log-mel": []}
    for fn in (host, in_graph):  # warm-up
        fn()
    for _ in range(rounds):
        samples["log-mel"].append(_timed(host_mel))
        samples["host"].append(_timed(host))
        samples["graph"].append(_timed(in_graph))
    return {name: {"wall_ms": statistics.median(s[0] for s in v) * 1000 / batch,
                   "cpu_ms": statistics.median(s[1] for s in v) * 1000 / batch}
            for name, v in samples.items()}


def table(results: dict[int, dict[str, dict[str, float]]], provider: str) -> str:
    lines = [f"| B | host log-mel alone, CPU ms | host features: wall ms | CPU ms | graph "
             f"features ({provider}): wall ms | CPU ms | graph / host, wall | CPU |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch, r in results.items():
        h, g, m = r["host"], r["graph"], r["log-mel"]
        lines.append(f"| {batch} | {m['cpu_ms']:.2f} | {h['wall_ms']:.2f} | {h['cpu_ms']:.2f} "
                     f"| {g['wall_ms']:.2f} | {g['cpu_ms']:.2f} | "
                     f"{g['wall_ms'] / h['wall_ms']:.2f} | {g['cpu_ms'] / h['cpu_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", type=Path, help="CLAP pack folder (default: a tiny one, built)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.pack
        if root is None or not (root / "manifest.json").is_file():
            from export.clap import build_tiny

            root = root or Path(tmp) / "clap"
            build_tiny(root)
        pack = load_pack(root, expected_kind="clap")
        results = {b: measure(pack, args.provider, b, args.rounds, args.threads,
                              args.precision) for b in args.batches}
    print(f"CLAP features, pack {pack.manifest.source} at {args.precision}, {args.provider}, "
          f"{args.threads} ORT thread(s), median of {args.rounds} interleaved rounds, "
          "per 10 s window:\n")
    print(table(results, args.provider))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
