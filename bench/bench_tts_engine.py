"""ChatTTS engine: decode-step throughput and the service-level batching comparison.

1. Decode steps: tokens/s with 1, 2, 4, 8 active sequences (no EOS: every row runs the
   same number of steps), for the KV-cache strategies (`present`: each step's present is
   the next past, copies only when rows join/leave; `device`: the same through IO binding
   with OrtValues, the CUDA path, here on CPU; `preallocated`: a fixed buffer with in-place
   column writes, which must copy the used cache into a contiguous past every step).
   Real-time factor = compute time / audio time; one token = 512 samples = 21.3 ms.
2. Service level (the pipeline in-process: prompt, engine, decoder + vocos batcher,
   post-processing, WAV encode; no HTTP): C closed-loop clients (8 and 32) each sending
   requests of mixed text lengths back to back. Continuous batching vs one request at a
   time (max_active=1: what other ChatTTS servers do behind a lock) vs static batches
   (wait up to 50 ms for a batch, run it to completion), measured in the same run:
   aggregate audio seconds per wall second and P50/P99 latency.

A random-weight model rarely samples EOS, so each request's token budget is set from its
text length (3 tokens per character: English speech runs ~15 characters/s and the
model emits 46.9 tokens/s) and EOS is masked until then: lengths are mixed as in real
traffic, and identical across modes.

Run from the repository root:
    .venv/bin/python -m bench.bench_tts_engine [--pack models/chattts] [--quick]
Without --pack the tiny pack is built into a temp folder (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batcher.steps import Admission, StepConfig
from service.pipelines.base import LoadContext
from service.runtime.metrics import Metrics
from service.runtime.packs import ModelPack, load_pack
from service.runtime.sessions import RuntimeConfig
from service.settings import Settings
from service.tts.engine import EngineConfig, GenerationEngine, KVCacheKind
from service.tts.jobs import GenerationJob, PassKind
from service.tts.model import TTSGraphs
from service.tts.sampling import SamplingParams

TOKEN_S = 512 / 24000
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
         "seven", "small", "birds", "sing", "in", "the", "early", "morning", "light", "near")


@dataclass(frozen=True)
class DecodeRow:
    cache: str
    active: int
    step_ms: float
    tokens_per_s: float
    rtf_stream: float
    rtf_aggregate: float
    cache_ms: float
    """KV-cache data movement outside the graph per decode step (steady state)."""
    membership_ms: float
    """KV-cache data movement when the rows joined and left (whole run)."""


async def decode_run(graphs: TTSGraphs, active: int, steps: int, cache: KVCacheKind,
                     prompt_len: int = 24) -> DecodeRow:
    config = EngineConfig(step=StepConfig(max_active=active, max_prefills_per_step=active),
                          kv_cache=cache)
    engine = GenerationEngine(graphs, config)
    engine.start()
    params = SamplingParams(min_new_tokens=steps + 1)  # no early EOS
    rng = np.random.default_rng(0)
    jobs = [GenerationJob(f"b{i}", PassKind.CODE, rng.integers(5, 2000, prompt_len), None, params,
                          steps, seed=i) for i in range(active)]
    await asyncio.gather(*(engine.generate(j) for j in jobs))
    stats = engine.stats()
    await engine.stop()
    step_s = stats.decode_s / max(stats.decode_steps, 1)
    return DecodeRow(cache.value, active, step_s * 1e3, stats.decode_rows / stats.decode_s,
                     step_s / TOKEN_S, step_s / (active * TOKEN_S),
                     stats.cache_step_s * 1e3 / max(stats.decode_steps, 1),
                     stats.cache_membership_s * 1e3)


@dataclass(frozen=True)
class ServiceRow:
    mode: str
    clients: int
    requests: int
    wall_s: float
    cpu_s: float
    """Process CPU time (every thread: engine, ORT, decode batcher, event loop)."""
    audio_s: float
    latencies: tuple[float, ...]
    mean_batch: float

    @property
    def audio_per_wall(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def audio_per_cpu(self) -> float:
        return self.audio_s / self.cpu_s


def merge(rows: list[ServiceRow]) -> ServiceRow:
    """Rounds of one (mode, clients) point: median wall and CPU, pooled latencies."""
    walls = sorted(rows, key=lambda r: r.wall_s)
    mid = walls[len(walls) // 2]
    return ServiceRow(mid.mode, mid.clients, mid.requests, mid.wall_s,
                      float(np.median([r.cpu_s for r in rows])), mid.audio_s,
                      tuple(x for r in rows for x in r.latencies),
                      float(np.mean([r.mean_batch for r in rows])))


def texts_for(client: int, count: int) -> list[str]:
    rng = np.random.default_rng(client)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def service_run(pack: ModelPack, graphs: TTSGraphs, mode: str, clients: int,
                      per_client: int, tokens_per_char: int) -> ServiceRow:
    from service.pipelines.chattts import ChatTTSPipeline, SpeechRequest

    max_active = 1 if mode == "sequential" else 8
    admission = Admission.STATIC if mode == "static" else Admission.CONTINUOUS
    config = EngineConfig(step=StepConfig(max_active=max_active, admission=admission,
                                          max_prefills_per_step=8), static_wait_ms=50.0)
    settings = Settings(_env_file=None, warmup=False)
    ctx = LoadContext(settings=settings, runtime=RuntimeConfig(provider=graphs.provider),
                      precision="fp32", metrics=Metrics())
    pipeline = ChatTTSPipeline(pack, ctx, graphs, config)
    await pipeline.start()
    latencies: list[float] = []
    audio = 0.0

    async def client(c: int) -> None:
        nonlocal audio
        for text in texts_for(c, per_client):
            budget = tokens_per_char * len(text)
            req = SpeechRequest(text=text, seed=c, max_new_tokens=budget, min_new_tokens=budget)
            t0 = time.perf_counter()
            result = await pipeline.synthesize(req)
            latencies.append(time.perf_counter() - t0)
            audio += result.duration_s

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = pipeline.engine.stats()
    await pipeline.stop()
    return ServiceRow(mode, clients, len(latencies), wall, cpu, audio, tuple(latencies),
                      stats.decode_rows / max(stats.decode_steps, 1))


def print_decode(rows: list[DecodeRow]) -> None:
    print("\n## Decode steps (tokens/s of batched decode steps)")
    print("| kv cache | active | step ms | tokens/s | RTF per stream | RTF aggregate | "
          "cache ms / step | join+leave ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r.cache} | {r.active} | {r.step_ms:.2f} | {r.tokens_per_s:.0f} | "
              f"{r.rtf_stream:.3f} | {r.rtf_aggregate:.3f} | {r.cache_ms:.2f} | "
              f"{r.membership_ms:.1f} |")


def print_service(rows: list[ServiceRow]) -> None:
    print("\n## Service level (closed-loop clients, mixed text lengths; median of rounds)")
    print("| clients | mode | requests | wall s | audio s / wall s | vs sequential | "
          "audio s / CPU s | vs sequential | P50 s | P99 s | mean decode batch |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {r.clients: r for r in rows if r.mode == "sequential"}
    for r in rows:
        b = base[r.clients]
        lat = list(r.latencies)
        print(f"| {r.clients} | {r.mode} | {r.requests} | {r.wall_s:.2f} | "
              f"{r.audio_per_wall:.2f} | {r.audio_per_wall / b.audio_per_wall:.2f}x | "
              f"{r.audio_per_cpu:.2f} | {r.audio_per_cpu / b.audio_per_cpu:.2f}x | "
              f"{percentile(lat, 50):.2f} | {percentile(lat, 99):.2f} | {r.mean_batch:.2f} |")


async def main_async(args: argparse.Namespace, pack_dir: Path) -> None:
    pack = load_pack(pack_dir, expected_kind="chattts")
    graphs = TTSGraphs.open(pack, args.precision,
                            RuntimeConfig(provider=args.provider, intra_op_threads=args.threads))
    gpt_precision = args.precision if args.precision in pack.precisions("gpt") else "fp32"
    print(f"pack {pack_dir} ({pack.manifest.source}): hidden {graphs.c.hidden_size}, "
          f"{graphs.c.num_layers} layers, gpt {gpt_precision}, on {graphs.provider}")
    decode_rows = []
    await decode_run(graphs, 2, 8, KVCacheKind.PRESENT)  # warm-up
    for active in (1, 2, 4, 8):
        for cache in (KVCacheKind.PRESENT, KVCacheKind.DEVICE, KVCacheKind.PREALLOCATED):
            # best of `repeats`: other processes only ever add time
            trials = [await decode_run(graphs, active, args.steps, cache, args.prompt_len)
                      for _ in range(args.repeats)]
            decode_rows.append(min(trials, key=lambda r: r.step_ms))
    print_decode(decode_rows)
    if args.decode_only:
        return
    print(f"service level: {args.rounds} rounds, ORT threads {args.threads or 'all'}")
    service_rows = []
    modes = ["continuous", "sequential", "static"]
    for clients, per_client in ((8, args.per_client), (32, max(1, args.per_client // 2))):
        runs: dict[str, list[ServiceRow]] = {m: [] for m in modes}
        for round_ in range(args.rounds):  # interleaved, order rotated: load drifts
            for mode in modes[round_ % 3:] + modes[:round_ % 3]:
                runs[mode].append(await service_run(pack, graphs, mode, clients, per_client,
                                                    args.tokens_per_char))
        service_rows += [merge(runs[m]) for m in modes]
    print_service(service_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, help="a chattts pack (default: build the tiny one)")
    parser.add_argument("--steps", type=int, default=128, help="decode steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="decode runs per point (best)")
    parser.add_argument("--precision", default="fp32",
                        help="graph variant (e.g. int8 from `python -m quant`); fp32 where absent")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads (1: steadier on a shared machine)")
    parser.add_argument("--rounds", type=int, default=3, help="service runs per point")
    parser.add_argument("--per-client", type=int, default=4,
                        help="requests per client at 8 clients (half that at 32)")
    parser.add_argument("--tokens-per-char", type=int, default=3,
                        help="token budget per text character (see the module note)")
    parser.add_argument("--prompt-len", type=int, default=24,
                        help="prompt tokens: the KV length the decode steps start from")
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda"],
                        help="where the graphs run (cuda: the device KV cache is the CUDA path)")
    parser.add_argument("--random-real", action="store_true",
                        help="build a real-size random-weight pack (slow) instead of the tiny")
    parser.add_argument("--quick", action="store_true", help="fewer steps and requests")
    args = parser.parse_args()
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "steps": 32, "per_client": 2,
                                     "repeats": 1, "rounds": 1})
    if args.pack is not None:
        asyncio.run(main_async(args, args.pack))
        return
    from export.chattts import build_random_real, build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        (build_random_real if args.random_real else build_tiny)(Path(tmp) / "chattts")
        asyncio.run(main_async(args, Path(tmp) / "chattts"))


if __name__ == "__main__":
    main()
