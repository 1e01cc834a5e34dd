"""The run's report: `bench/results/<stamp>.md`, PNG plots and the raw figures as JSON.

Every comparison is a ratio between figures taken in the same run on the same machine:
batching on vs off, audioserve vs the raw ORT ceiling, audioserve vs its peers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from bench.overload import OverloadResult
from bench.prom import QueueFigures
from bench.raw_ceiling import CeilingPoint
from bench.run_result import RunResult
from bench.soak import SoakResult
from bench.sweep import ConfigResult, Point

CLAP_CEILING_TARGET = 0.85
CLAP_BATCHING_TARGET = 1.2
TARGET_CONCURRENCY = 32


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) or math.isinf(value) else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b and not math.isnan(b) else math.nan


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{s or 'no answer'}: {n}" for s, n in counts.items()) or "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _queue_cells(point: Point) -> tuple[str, str, str]:
    q = main_queue(point)
    if q is None:
        return "-", "-", "-"
    hist = " ".join(f"≤{k}:{v}" for k, v in q.batch_histogram.items())
    return f"{fmt(q.mean_batch, 2)} ({q.queue})", hist or "-", fmt(q.mean_wait_ms)


def ceiling_at(points: list[CeilingPoint], batch: float) -> CeilingPoint | None:
    """The ceiling measured at the batch size nearest `batch`."""
    return min(points, key=lambda p: abs(p.batch - batch)) if points else None


def best_ceiling(points: list[CeilingPoint], max_batch: int) -> CeilingPoint | None:
    """The best raw rate at any batch size the service may use: the stricter comparison,
    since the adaptive cap picks among them."""
    allowed = [p for p in points if p.batch <= max_batch]
    return max(allowed, key=lambda p: p.items_per_s) if allowed else None


def main_queue(point: Point) -> QueueFigures | None:
    """The model's own queue at this point (not the CLAP text side), the busiest one."""
    main = [q for q in point.queues if not q.queue.endswith("_text")] or point.queues
    return max(main, key=lambda x: x.items) if main else None


def summary_rows(run: RunResult) -> list[list[str]]:
    on, off = run.config("on"), run.config("off")
    peers = [run.config(k) for k in ("on-clap", "litserve", "rayserve")]
    rows = []
    for ep in run.endpoints():
        base = on or off
        assert base is not None
        for point in base.points(ep):
            c = point.load.concurrency
            a = on.at(ep, c) if on else None
            b = off.at(ep, c) if off else None
            cells = [ep, str(c), fmt(a.load.ok_rps if a else math.nan),
                     fmt(a.load.p50_ms if a else math.nan), fmt(a.load.p99_ms if a else math.nan),
                     fmt(b.load.ok_rps if b else math.nan), fmt(b.load.p99_ms if b else math.nan),
                     fmt(ratio(a.load.ok_rps if a else None, b.load.ok_rps if b else None), 2),
                     fmt(ceiling_ratio(run, ep, a), 2)]
            for peer in peers:
                pp = peer.at(ep, c) if peer else None
                cells.append(f"{fmt(pp.load.ok_rps)} / {fmt(pp.load.p99_ms)}" if pp else "-")
            rows.append(cells)
    return rows


def ceiling_ratio(run: RunResult, endpoint: str, point: Point | None,
                  best: bool = False) -> float:
    """Service work rate over the raw rate at the batch size it ran (its mean batch), or,
    with `best`, over the best raw rate at any allowed batch size."""
    model = {"classify": "clap", "emotion": "emotion2vec"}.get(endpoint)
    if point is None or model not in run.ceilings or endpoint not in run.units:
        return math.nan
    points = run.ceilings[model]
    queue = main_queue(point)
    if best:
        ceiling = best_ceiling(points, run.max_batch_size)
    elif queue is not None and not math.isnan(queue.mean_batch):
        ceiling = ceiling_at(points, queue.mean_batch)
    else:
        ceiling = ceiling_at(points, run.max_batch_size)
    if ceiling is None:
        return math.nan
    _, per_request = run.units[endpoint]
    return point.load.ok_rps * per_request / ceiling.items_per_s


def summary_section(run: RunResult) -> list[str]:
    header = ["endpoint", "c", "on req/s", "on P50 ms", "on P99 ms", "off req/s", "off P99 ms",
              "on/off", "on/raw ceiling", "on, CLAP only: req/s / P99", "LitServe req/s / P99",
              "Ray Serve req/s / P99"]
    lines = ["## Summary (closed loop, wrk)", "",
             f"`on`: dynamic batching (max batch {run.max_batch_size}); `off`: "
             "AUDIOSERVE_MAX_BATCH_SIZE=1. `on/raw ceiling`: service work rate (req/s x "
             "units per request) over the raw ORT graph rate at the batch size it ran (its mean "
             "batch, nearest measured), with the same workers and threads. "
             "`on, CLAP only`: batching on with only the CLAP pack loaded, as the peers "
             "serve it (measured when other packs are in the run). Latency in ms; `-`: "
             "not measured.", ""]
    return lines + _table(header, summary_rows(run))


def targets_section(run: RunResult) -> list[str]:
    on, off = run.config("on"), run.config("off")
    lines = ["## Targets", ""]
    a = on.at("classify", TARGET_CONCURRENCY) if on else None
    b = off.at("classify", TARGET_CONCURRENCY) if off else None
    rows = []
    if a is not None:
        r = ceiling_ratio(run, "classify", a)
        rows.append([f"CLAP /classify c={TARGET_CONCURRENCY}: on / raw ceiling at its batch size",
                     f">= {CLAP_CEILING_TARGET}", fmt(r, 2), _verdict(r >= CLAP_CEILING_TARGET)])
        r = ceiling_ratio(run, "classify", a, best=True)
        rows.append([f"(stricter) on / best raw rate at any batch size <= {run.max_batch_size}",
                     f">= {CLAP_CEILING_TARGET}", fmt(r, 2), _verdict(r >= CLAP_CEILING_TARGET)])
    if a is not None and b is not None:
        r = ratio(a.load.ok_rps, b.load.ok_rps)
        rows.append([f"CLAP /classify c={TARGET_CONCURRENCY}: on / off",
                     f">= {CLAP_BATCHING_TARGET}", fmt(r, 2), _verdict(r >= CLAP_BATCHING_TARGET)])
        # No server serves more than the raw graph computes, so best raw rate / off's work
        # rate bounds what any batcher could gain over off on this machine.
        served = ceiling_ratio(run, "classify", b, best=True)
        if served > 0:
            bound = 1 / served
            rows.append(["(bound) best raw rate / off's work rate: the most any batcher "
                         "could gain over off here", f">= {CLAP_BATCHING_TARGET} to be reachable",
                         fmt(bound, 2), "reachable" if bound >= CLAP_BATCHING_TARGET
                         else "**unreachable on this machine**"])
    alone = run.config("on-clap")
    if alone is not None:  # audioserve with the CLAP pack only, as the peers serve it
        a = alone.at("classify", TARGET_CONCURRENCY)
    for key, name in (("litserve", "LitServe"), ("rayserve", "Ray Serve")):
        peer = run.config(key)
        p = peer.at("classify", TARGET_CONCURRENCY) if peer else None
        if a is not None and p is not None:
            faster = a.load.ok_rps > p.load.ok_rps
            lower = a.load.p99_ms < p.load.p99_ms
            rows.append([f"c={TARGET_CONCURRENCY}: audioserve vs {name} (req/s, P99)",
                         "higher req/s, lower P99",
                         f"{fmt(ratio(a.load.ok_rps, p.load.ok_rps), 2)}x req/s, P99 "
                         f"{fmt(a.load.p99_ms)} vs {fmt(p.load.p99_ms)} ms",
                         _verdict(faster and lower)])
    if not rows:
        return [*lines, "No target could be evaluated in this run.", ""]
    return lines + _table(["target", "wanted", "measured", "verdict"], rows)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def config_section(cfg: ConfigResult) -> list[str]:
    lines = [f"### {cfg.title}", ""]
    if cfg.settings:
        lines += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in cfg.settings.items()), ""]
    if cfg.error:
        lines += [f"**Failed:** {cfg.error}", ""]
    lines += [f"RSS after warm-up {fmt(cfg.rss_after_warmup_mb)} MB, peak (VmHWM, process "
              f"tree) {fmt(cfg.peak_rss_mb)} MB.", ""]
    header = ["endpoint", "load", "ok req/s", "P50", "P90", "P99", "max", "non-2xx",
              "mean batch", "batch sizes (≤bucket:batches)", "mean queue wait ms"]
    rows = []
    for point in [*cfg.sweep, *cfg.open_loop]:
        lo = point.load
        load = f"c={lo.concurrency}" if lo.mode == "closed" else f"open {lo.rate:.1f}/s"
        mean_batch, hist, wait = _queue_cells(point)
        few = lo.mode == "closed" and lo.requests < 2 * lo.concurrency
        rate = fmt(lo.ok_rps, 2) + (f" (only {lo.requests} done: lengthen --duration)" if few
                                    else "")
        bad = _statuses(lo.non_2xx())
        if lo.extra.get("invalid_2xx"):
            bad += f"; **{lo.extra['invalid_2xx']:.0f} 2xx with an invalid body**"
        rows.append([lo.endpoint, load, rate, fmt(lo.p50_ms), fmt(lo.p90_ms),
                     fmt(lo.p99_ms), fmt(lo.max_ms), bad, mean_batch, hist, wait])
    return lines + _table(header, rows)


def ceiling_section(run: RunResult) -> list[str]:
    if not run.ceilings:
        return []
    lines = ["## Raw ONNX Runtime ceiling (plain loop, no HTTP/decode/batcher)", ""]
    rows = [[p.model, str(p.batch), fmt(p.items_per_s), p.unit]
            for points in run.ceilings.values() for p in points]
    lines += _table(["model", "batch", "rate", "unit"], rows)
    for ep, (unit, per) in run.units.items():
        lines.append(f"- `{ep}`: {per:.2f} {unit} per request on average (the bodies' mix).")
    return [*lines, ""]


def overload_section(o: OverloadResult | None) -> list[str]:
    if o is None:
        return []
    lines = ["## Overload (open loop, Poisson arrivals)", "",
             f"Endpoint `{o.endpoint}`; capacity {o.capacity_rps:.2f} req/s (closed loop); "
             f"overload at {o.factor:g}x = {o.capacity_rps * o.factor:.2f} req/s; deadline "
             f"(AUDIOSERVE_REQUEST_TIMEOUT_S) {o.deadline_s:g} s; normal latency for recovery: "
             f"<= {fmt(o.normal_latency_ms)} ms.", ""]
    rows = []
    for name, r in (("baseline", o.baseline), ("overload", o.overload),
                    ("recovery", o.recovery)):
        rows.append([name, fmt(r.rate, 2), str(r.requests), fmt(r.ok_rps, 2), fmt(r.p50_ms),
                     fmt(r.p99_ms), _statuses(r.non_2xx()), str(r.retry_after_503),
                     fmt(r.extra.get("shed_p99_ms", math.nan))])
    lines += _table(["phase", "offered req/s", "sent", "ok req/s", "ok P50 ms", "ok P99 ms",
                     "non-2xx", "503 with Retry-After", "shed P99 ms"], rows)
    served = o.overload.ok_rps / (o.capacity_rps * o.factor) if o.capacity_rps else math.nan
    lines += [f"During the overload the service answered {fmt(served * 100, 0)} % of the offered "
              f"load with a 2xx, {fmt(o.overload.ok_rps / o.capacity_rps, 2)}x the measured "
              "capacity (near 100 % of the offered load would mean the capacity was "
              "underestimated and this was no overload).",
              f"Recovery after the overload stopped: {fmt(o.recovery_s, 2)} s "
              "(`-`: not back to normal within the recovery phase).",
              f"Rejections counted by the service: {o.rejections or '-'}.", "",
              "Where the time went (service side, whole run): " + (", ".join(
                  f"{k} {v:.0f} ms" for k, v in o.stage_mean_ms.items()) or "-") + "; "
              + ("; ".join(f"{q.queue}: mean batch {fmt(q.mean_batch, 2)}, mean queue wait "
                           f"{fmt(q.mean_wait_ms)} ms" for q in o.batch_queues) or "-") + ".",
              "",
              f"Time inside the server for `{o.server_time.route}` (middleware to last byte, "
              f"every status, whole run): {o.server_time.requests} requests, mean "
              f"{fmt(o.server_time.mean_ms)} ms, P99 <= {fmt(o.server_time.p99_bound_ms)} ms. "
              "Client-side latency far above this is time spent before the app saw the "
              "request (accept backlog, a starved event loop, or the load generator itself).",
              ""]
    lines += _table(["check", "verdict"], [[k, _verdict(v)] for k, v in o.checks.items()])
    return lines


def soak_section(s: SoakResult | None) -> list[str]:
    if s is None:
        return []
    lines = ["## Soak (mixed open-loop traffic)", "",
             f"{s.minutes:g} min over {', '.join(s.endpoints)} at {s.rate:.2f} req/s (Poisson): "
             f"{s.requests} requests, {s.ok} valid 2xx, {s.shed} shed (503/504), "
             f"{s.errors} errors ({_statuses(s.error_statuses)}; invalid 2xx bodies: "
             f"{s.invalid_2xx}).", "",
             f"RSS (process tree), read idle: start {s.rss_start_mb:.1f} MB (after a 1 min "
             f"warm-up of the same traffic), end {s.rss_end_mb:.1f} MB, growth "
             f"{s.rss_growth_mb:+.1f} MB, peak {s.rss_peak_mb:.1f} MB; the plot shows it "
             "under load.", ""]
    rows = [[ep, fmt(s.p50_ms[ep]), fmt(s.p99_ms[ep])] for ep in s.endpoints]
    lines += _table(["endpoint", "P50 ms", "P99 ms"], rows)
    lines += _table(["check", "verdict"], [[k, _verdict(v)] for k, v in s.checks.items()])
    return lines


def header_section(run: RunResult, plots: list[Path], md_path: Path) -> list[str]:
    i = run.info
    lines = [f"# audioserve load test — {i['started']}", "",
             f"- Machine: {i['machine']}", f"- Commit: `{i['commit']}`",
             f"- Command: `{i['command']}`", f"- Packs: {i['packs']}",
             f"- Bodies: {i['bodies']}", f"- Plan: {i['plan']}"]
    lines += [f"- Note: {n}" for n in run.notes]
    lines.append("")
    lines += [f"![{p.stem}]({p.relative_to(md_path.parent)})" for p in plots]
    return [*lines, ""]


def write(run: RunResult, results_dir: Path, stem: str) -> Path:
    md_path = results_dir / f"{stem}.md"
    assets = results_dir / stem
    assets.mkdir(parents=True, exist_ok=True)
    try:
        from bench.plots import make_plots  # matplotlib only when writing
    except ImportError:  # the `bench` extra is not installed (e.g. the CI smoke run)
        plots: list[Path] = []
        run.notes.append("no plots: matplotlib is not installed (`pip install -e .[bench]`)")
    else:
        plots = make_plots(run, assets)
    lines = header_section(run, plots, md_path)
    lines += summary_section(run) + targets_section(run)
    from bench.cluster import cluster_section  # `bench/run --cluster`

    lines += cluster_section(run.configs, run.endpoints(), os.cpu_count() or 1)
    lines += ["## Each configuration", ""]
    for cfg in run.configs:
        lines += config_section(cfg)
    lines += ceiling_section(run) + overload_section(run.overload) + soak_section(run.soak)
    md_path.write_text("\n".join(lines))
    (assets / "results.json").write_text(json.dumps(dataclasses.asdict(run), indent=1,
                                                    default=str))
    return md_path
