"""`bench/run`: the whole load test in one command, written up in bench/results/<stamp>.md.

1. builds the packs it needs when missing (tiny by default, `--random-real` for figures
   that mean something) and the request bodies (bench/bodies.py);
2. measures the raw ONNX Runtime ceiling of each audio graph (bench/raw_ceiling.py);
3. starts `python -m service` as a separate process per configuration — batching on, and
   AUDIOSERVE_MAX_BATCH_SIZE=1 — waits for /readyz, runs the wrk concurrency sweep per
   endpoint plus an open-loop fixed-rate run, reading batch sizes and queue waits from
   /metrics and peak RSS from /proc;
4. the peers (LitServe, Ray Serve; the `bench` extra) on the same CLAP graph and bodies (a
   peer that is not installed is skipped with a PEER SKIPPED warning, here and in the report);
5. `--overload`: shedding and recovery at 4x capacity; `--soak-minutes N`: mixed traffic;
6. writes the report, plots and raw JSON. Loopback only.

Examples:
  bench/run --quick                       # a few seconds per point: checks the harness
  bench/run --random-real --overload --soak-minutes 10      # the figures for the README
  bench/run --endpoints classify --concurrency 1 8 32 --duration 20 --no-peers
  bench/run --cluster --no-off --no-peers  # also through Ray Serve (bench/cluster.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import bodies as bodies_mod
from bench import cluster as cluster_bench
from bench import peers, raw_ceiling
from bench.overload import run_overload
from bench.packs import ENDPOINT_MODEL, ensure_pack
from bench.report import summary_section, targets_section, write
from bench.run_result import RunResult
from bench.server import REPO, audioserve
from bench.soak import run_soak
from bench.sweep import ConfigResult, SweepPlan, run_config
from bench.wrk_load import ensure_wrk

ALL_ENDPOINTS = ("classify", "emotion", "tts")


@dataclass(frozen=True)
class Preset:
    duration_s: float
    concurrency: tuple[int, ...]
    open_seconds: float
    warmup_s: float
    overload_phases: tuple[float, float, float]
    capacity_s: float
    ceiling_s: float


FULL = Preset(15, (1, 8, 32, 64, 128), 15, 3, (10, 20, 15), 15, 3)
QUICK = Preset(3, (1, 8, 32), 4, 1, (4, 8, 8), 5, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short points (harness check)")
    p.add_argument("--duration", type=float, help="seconds per sweep point (full: 15)")
    p.add_argument("--concurrency", type=int, nargs="+", help="full: 1 8 32 64 128")
    p.add_argument("--endpoints", default=",".join(ALL_ENDPOINTS),
                   help="comma-separated subset of classify,emotion,tts")
    p.add_argument("--random-real", action="store_true",
                   help="random weights at the real sizes (packs in models/bench-random-real)")
    p.add_argument("--models-dir", type=Path, help="default models/bench-{tiny,random-real}")
    p.add_argument("--batch-size", type=int, default=8, help="AUDIOSERVE_MAX_BATCH_SIZE (on)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--deadline-s", type=float, default=30.0,
                   help="AUDIOSERVE_REQUEST_TIMEOUT_S for the sweeps")
    p.add_argument("--threads", type=int, default=0,
                   help="ORT intra-op threads per session (0: the service's default)")
    p.add_argument("--workers", type=int, default=0,
                   help="batches run at once, AUDIOSERVE_BATCH_WORKERS (0: the service's "
                        "default); the raw ceiling and the peers get the same")
    p.add_argument("--fixed-size", action="store_true",
                   help="AUDIOSERVE_ADAPTIVE_BATCH_SIZE=false: always fill --batch-size")
    p.add_argument("--no-off", action="store_true", help="skip the max_batch_size=1 config")
    p.add_argument("--cluster", action="store_true",
                   help="also through Ray Serve (`python -m service.cluster`): one replica per "
                        "model, then two CLAP replicas; needs the `cluster` extra")
    p.add_argument("--cluster-python-proxy", action="store_true",
                   help="with --cluster: also one replica per model behind Ray Serve's "
                        "Python HTTP proxy (the cluster's default is its HAProxy ingress)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="LitServe and Ray Serve on the CLAP graph (the `bench` extra); a peer "
                        "that is not installed is skipped, and the output and report say so")
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the sweeps and peers (e.g. only --overload / --soak-minutes)")
    p.add_argument("--overload", action="store_true", help="4x-capacity shedding test")
    p.add_argument("--overload-factor", type=float, default=4.0)
    p.add_argument("--overload-deadline-s", type=float, default=5.0)
    p.add_argument("--overload-endpoint", default="classify")
    p.add_argument("--overload-max-queue", type=int,
                   help="AUDIOSERVE_MAX_QUEUE for the overload run (default: --max-queue)")
    p.add_argument("--soak-minutes", type=float, default=0.0)
    p.add_argument("--soak-load", type=float, default=0.5, help="share of mixed capacity")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--service-root", type=Path, default=REPO,
                   help="the checkout whose `service` is measured (default: this one)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, load average {load:.2f} at start; "
            f"ORT providers: {_providers()}")


def _providers() -> str:
    import onnxruntime as ort

    return ", ".join(p.removesuffix("ExecutionProvider") for p in ort.get_available_providers())


def commit() -> str:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:  # no git where the bench runs (a copied tree on a GPU machine)
            return ""
    dirty = git("status", "--porcelain", "--", "service", "batcher")
    return git("rev-parse", "--short", "HEAD") + (" (service/ or batcher/ modified)" if dirty
                                                  else "")


def resolve_parallelism(args: argparse.Namespace) -> None:
    """Fix --workers and --threads to what the service would choose on this machine, so the
    service, the raw ceiling and the peers all run the same parallelism."""
    from service.pipelines.loader import parallelism
    from service.runtime.sessions import resolve_provider
    from service.settings import Settings

    settings = Settings(_env_file=None, batch_workers=args.workers,
                        intra_op_threads=args.threads)
    args.workers, args.threads = parallelism(settings, resolve_provider("auto"), True)


def service_settings(args: argparse.Namespace, models: list[str], **over: object) -> dict[str, str]:
    s: dict[str, object] = {"models": ",".join(models), "max_batch_size": args.batch_size,
                            "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue,
                            "request_timeout_s": args.deadline_s,
                            "intra_op_threads": args.threads, "batch_workers": args.workers,
                            "adaptive_batch_size": not args.fixed_size}
    s.update(over)
    return {k: str(v) for k, v in s.items()}


def prepare(args: argparse.Namespace, models_dir: Path, log_dir: Path,
            notes: list[str]) -> dict[str, bodies_mod.Endpoint]:
    wanted = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    unknown = set(wanted) - set(ALL_ENDPOINTS)
    if unknown:
        raise SystemExit(f"unknown endpoints {sorted(unknown)}; known: {ALL_ENDPOINTS}")
    ready = []
    for ep in wanted:
        log(f"pack for /{ep} ({ENDPOINT_MODEL[ep]}) in {models_dir} ...")
        status = ensure_pack(ENDPOINT_MODEL[ep], models_dir, random_real=args.random_real,
                             log_dir=log_dir)
        log(f"  {status.model}: {status.note}")
        if status.ready:
            ready.append(ep)
        else:
            notes.append(f"/{ep} skipped: {status.model} pack {status.note}")
    if not ready:
        raise SystemExit("no endpoint has a pack: nothing to measure")
    return bodies_mod.build(REPO / "bench" / "bodies", ready)


def measure_configs(args: argparse.Namespace, models_dir: Path,
                    endpoints: dict[str, bodies_mod.Endpoint], plan: SweepPlan,
                    log_dir: Path) -> list[ConfigResult]:
    models = [ENDPOINT_MODEL[e] for e in endpoints]
    configs = [("on", f"audioserve, batching on (max batch {args.batch_size}, "
                      f"wait {args.max_wait_ms:g} ms)", service_settings(args, models))]
    if not args.no_off:
        configs.append(("off", "audioserve, batching off (max_batch_size=1)",
                        service_settings(args, models, max_batch_size=1)))
    results = []
    for key, title, settings in configs:
        log(f"configuration {key}: {settings}")
        server = audioserve(f"audioserve-{key}", models_dir, settings, log_dir=log_dir,
                            service_root=args.service_root)
        results.append(run_config(key, title, settings, server, endpoints, plan, log))
    if args.cluster:
        results += measure_cluster(args, models_dir, endpoints, plan, log_dir, models)
    return results


def measure_cluster(args: argparse.Namespace, models_dir: Path,
                    endpoints: dict[str, bodies_mod.Endpoint], plan: SweepPlan, log_dir: Path,
                    models: list[str]) -> list[ConfigResult]:
    """The `on` settings through Ray Serve: one replica per model, then two of CLAP."""
    settings = service_settings(args, models)
    configs = [(cluster_bench.ONE, "Ray Serve cluster, one replica per model", {}, endpoints)]
    if "classify" in endpoints:
        configs.append((cluster_bench.TWO, "Ray Serve cluster, two CLAP replicas",
                        {"clap_replicas": "2"}, {"classify": endpoints["classify"]}))
    if args.cluster_python_proxy:
        configs.append((cluster_bench.PYPROXY, "Ray Serve cluster behind its Python HTTP "
                        "proxy, one replica per model", {}, endpoints))
    results = []
    for key, title, cluster, eps in configs:
        env = cluster_bench.PYPROXY_ENV if key == cluster_bench.PYPROXY else {}
        log(f"configuration {key}: {settings} {cluster} {env}")
        server = cluster_bench.cluster_server(f"audioserve-{key}", models_dir, settings, cluster,
                                              log_dir=log_dir, service_root=args.service_root,
                                              extra_env=env)
        results.append(run_config(key, title, {**settings, **cluster}, server, eps, plan, log))
    return results


def peer_skipped(notes: list[str], why: str) -> None:
    """A peer left out is said in the run's output and in the report's header, never
    silently: a report without its peers is not the documented comparison."""
    notes.append(f"**PEER SKIPPED**: {why}")
    log(f"WARNING: PEER SKIPPED: {why}")


def measure_peers(args: argparse.Namespace, models_dir: Path,
                  endpoints: dict[str, bodies_mod.Endpoint], plan: SweepPlan, log_dir: Path,
                  notes: list[str]) -> list[ConfigResult]:
    if not args.peers:
        peer_skipped(notes, "LitServe and Ray Serve: --no-peers")
        return []
    if "classify" not in endpoints:
        peer_skipped(notes, "LitServe and Ray Serve: they serve /classify, which this run "
                            "does not measure")
        return []
    tuning = peers.PeerTuning(args.batch_size, args.max_wait_ms, args.threads, args.workers,
                              args.deadline_s, args.max_queue)
    results = []
    if len(endpoints) > 1:  # the peers serve CLAP alone: so does audioserve for the comparison
        settings = service_settings(args, ["clap"])
        log(f"configuration on-clap (for the peers): {settings}")
        server = audioserve("audioserve-on-clap", models_dir, settings, log_dir=log_dir,
                            service_root=args.service_root)
        results.append(run_config("on-clap", "audioserve, batching on, CLAP pack only (the "
                                  "peers' baseline)", settings, server,
                                  {"classify": endpoints["classify"]}, plan, log))
    for key, title in (("litserve", "LitServe"), ("rayserve", "Ray Serve")):
        if missing := peers.missing(key):
            peer_skipped(notes, f"{title}: `{missing}` is not installed (pip install -e "
                                f"\".[bench]\" installs every peer)")
            continue
        server = peers.peer_server(key, models_dir / "clap", tuning, log_dir)
        settings = {"max_batch_size": str(args.batch_size), "wait_ms": str(args.max_wait_ms),
                    "threads": str(args.threads), "workers": str(args.workers),
                    "timeout_s": str(args.deadline_s)}
        log(f"peer {key}: {settings}")
        results.append(run_config(key, f"{title} (same CLAP graph, decode and mel)", settings,
                                  server, {"classify": endpoints["classify"]}, plan, log))
    return results


def measure_ceilings(args: argparse.Namespace, models_dir: Path,
                     endpoints: dict[str, bodies_mod.Endpoint],
                     preset: Preset) -> dict[str, list[raw_ceiling.CeilingPoint]]:
    if args.no_ceiling:
        return {}
    out = {}
    batches = sorted({1, 2, 4, 8, 16, args.batch_size})
    for ep in endpoints:
        model = ENDPOINT_MODEL[ep]
        if model not in raw_ceiling.CEILINGS:
            continue
        log(f"raw ORT ceiling of {model} at batch {batches} ...")
        out[model] = raw_ceiling.ceiling(model, models_dir / model, batches, preset.ceiling_s,
                                         args.threads, args.workers)
        log("  " + ", ".join(f"b{p.batch}: {p.items_per_s:.1f} {p.unit}/s" for p in out[model]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resolve_parallelism(args)
    preset = QUICK if args.quick else FULL
    plan = SweepPlan(list(args.concurrency or preset.concurrency),
                     args.duration or preset.duration_s, open_seconds=preset.open_seconds,
                     warmup_s=preset.warmup_s)
    ensure_wrk()
    started = datetime.now(UTC)
    stem = started.strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else "")
    log_dir = args.out / stem / "logs"
    flavour = "random-real" if args.random_real else "tiny"
    models_dir = args.models_dir or REPO / "models" / f"bench-{flavour}"
    notes: list[str] = []
    info = {"started": f"{started:%Y-%m-%d %H:%M} UTC", "machine": machine(), "commit": commit(),
            "command": "bench/run " + shlex.join(sys.argv[1:] if argv is None else argv),
            "bodies": bodies_mod.speech_source(),
            "plan": f"{plan.duration_s:g} s per point, concurrency {plan.concurrency}, "
                    f"open loop at {plan.open_fraction:g}x the best req/s for "
                    f"{plan.open_seconds:g} s"}
    endpoints = prepare(args, models_dir, log_dir, notes)
    info["packs"] = f"{flavour} ({models_dir}): " + ", ".join(ENDPOINT_MODEL[e] for e in endpoints)
    ceilings = measure_ceilings(args, models_dir, endpoints, preset)
    configs = []
    if not args.no_sweep:
        configs = measure_configs(args, models_dir, endpoints, plan, log_dir)
        configs += measure_peers(args, models_dir, endpoints, plan, log_dir, notes)
    overload = soak = None
    models = [ENDPOINT_MODEL[e] for e in endpoints]
    if args.overload:
        overload = _overload(args, models_dir, endpoints, models, preset, log_dir, notes,
                             configs)
    if args.soak_minutes > 0:
        soak = _soak(args, models_dir, endpoints, models, preset, log_dir, notes)
    run = RunResult(info, configs, ceilings,
                    {n: (e.unit, e.units_per_request) for n, e in endpoints.items()},
                    args.batch_size, overload, soak, notes)
    path = write(run, args.out, stem)
    print("\n".join(summary_section(run) + targets_section(run)
                    + cluster_bench.cluster_section(run.configs, run.endpoints(),
                                                    os.cpu_count() or 1)))
    log(f"report: {path}")
    return 0


def _overload(args: argparse.Namespace, models_dir: Path,
              endpoints: dict[str, bodies_mod.Endpoint], models: list[str], preset: Preset,
              log_dir: Path, notes: list[str], configs: list[ConfigResult]) -> object:
    name = args.overload_endpoint if args.overload_endpoint in endpoints else next(iter(endpoints))
    on = next((c for c in configs if c.key == "on"), None)
    known = max((p.load.ok_rps for p in on.points(name)), default=0.0) if on else 0.0
    settings = service_settings(args, models, request_timeout_s=args.overload_deadline_s,
                                max_queue=args.overload_max_queue or args.max_queue)
    log(f"overload on /{name} at {args.overload_factor:g}x capacity: {settings}")
    server = audioserve("audioserve-overload", models_dir, settings, log_dir=log_dir,
                        service_root=args.service_root)
    try:
        server.start()
        result = run_overload(server, endpoints[name], deadline_s=args.overload_deadline_s,
                              factor=args.overload_factor,
                              capacity_concurrency=min(32, max(args.concurrency
                                                               or preset.concurrency)),
                              capacity_seconds=preset.capacity_s,
                              phase_seconds=preset.overload_phases, known_capacity=known)
        log(f"  checks: {result.checks}; recovery {result.recovery_s:.2f} s")
        return result
    except Exception as exc:  # keep the rest of the report
        notes.append(f"overload run failed: {type(exc).__name__}: {exc}")
        log(f"  overload FAILED: {exc}")
        return None
    finally:
        server.stop()


def _soak(args: argparse.Namespace, models_dir: Path, endpoints: dict[str, bodies_mod.Endpoint],
          models: list[str], preset: Preset, log_dir: Path, notes: list[str]) -> object:
    settings = service_settings(args, models)
    log(f"soak {args.soak_minutes:g} min on {list(endpoints)} ...")
    server = audioserve("audioserve-soak", models_dir, settings, log_dir=log_dir,
                        service_root=args.service_root)
    try:
        server.start()
        t0 = time.monotonic()
        result = run_soak(server, list(endpoints.values()), args.soak_minutes,
                          load=args.soak_load, capacity_seconds=preset.capacity_s)
        log(f"  soak done in {time.monotonic() - t0:.0f} s: {result.checks}")
        return result
    except Exception as exc:
        notes.append(f"soak failed: {type(exc).__name__}: {exc}")
        log(f"  soak FAILED: {exc}")
        return None
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
