"""`bench/run --cluster`: the same sweep through Ray Serve (`python -m service.cluster`),
side by side with the single process in the same run, and the scaling model's check.

Configurations: `cluster` (one replica per model, behind Ray Serve's HAProxy ingress, the
default), `cluster-2clap` (two CLAP replicas, /classify only) and, with
`--cluster-python-proxy`, `cluster-pyproxy` (Ray Serve's Python HTTP proxy instead). Each
point also records the CPU seconds every process of the server used (by role: the HTTP
proxy, the ingress replica, each model replica, Ray's own daemons), which is what the
scaling model is built from.

Scaling model. A request costs `c_http` CPU ms where HTTP ends (proxy + ingress: parsing,
decode, features, tokenising, the Ray hops) and `w` ms of model time per request on the
model's device (its batches' cost per item at the batch size it runs, from /v1/models
`ms_per_unit`, times the items per request). With N model replicas on N GPUs and K cores
for proxies and ingress replicas, throughput <= min(N x 1000 / w, K x 1000 / c_http); on
nodes without GPUs the model's CPU ms join `c_http` on the same cores, so one machine
serves at most cores x 1000 / (CPU ms of every process per request), however many
replicas it runs. The report checks that CPU side against the 1- and 2-replica runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.server import HOST, REPO, ServerProcess, audioserve, free_port
from bench.sweep import ConfigResult, Point

TARGET_ADDED_MS = 5.0
TARGET_RATIO = 0.8
SINGLE, ONE, TWO, PYPROXY = "on", "cluster", "cluster-2clap", "cluster-pyproxy"
PYPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
"""Ray Serve's Python HTTP proxy instead of its HAProxy ingress (the cluster's default)."""
PROXY_ROLES = ("ProxyActor", "haproxy", "HAProxyManager")
MODELS = ("clap", "emotion2vec", "chattts")


class ClusterServer(ServerProcess):
    """Ray's HAProxy ingress can outlive the cluster that started it (its reloads leave the
    process tree): stopping also ends the HAProxy processes started meanwhile."""

    _started_at: float = 0.0

    def start(self, ready_timeout_s: float = 300.0) -> ServerProcess:
        self._started_at = time.time()
        return super().start(ready_timeout_s)

    def stop(self, grace_s: float = 20.0) -> None:
        super().stop(grace_s)
        for pid in _haproxies_since(self._started_at):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _haproxies_since(t0: float) -> list[int]:
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"haproxy-serve" not in (entry / "cmdline").read_bytes():
                continue
            started = boot + int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        except (OSError, ValueError, IndexError):
            continue
        if started >= t0 - 1.0:
            found.append(int(entry.name))
    return found


def cluster_server(name: str, models_dir: Path, settings: dict[str, str],
                   cluster: dict[str, str], *, log_dir: Path, service_root: Path = REPO,
                   python: str = sys.executable, extra_env: dict[str, str] | None = None
                   ) -> ServerProcess:
    """`python -m service.cluster` on a new local Ray cluster of its own."""
    port = free_port()
    env = {f"AUDIOSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    env.update({f"AUDIOSERVE_CLUSTER_{k.upper()}": str(v) for k, v in cluster.items()})
    env.update(AUDIOSERVE_MODELS_DIR=str(models_dir.resolve()), AUDIOSERVE_HOST=HOST,
               AUDIOSERVE_PORT=str(port), AUDIOSERVE_LOG_LEVEL="warning",
               PYTHONPATH=str(service_root), RAY_ADDRESS="")
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    return ClusterServer(name, [python, "-m", "service.cluster"], port, env, cwd=service_root,
                         log_path=log_dir / f"{name}.log")


SERVER_COMMAND = {False: "python -m service", True: "python -m service.cluster"}
"""What `one_or_cluster` runs, as its reports name it."""


def one_or_cluster(name: str, models_dir: Path, settings: dict[str, str], *, log_dir: Path,
                   cluster: bool) -> ServerProcess:
    """`python -m service`, or with `cluster` the same settings on `python -m
    service.cluster` (one replica per model): for the benchmarks that take `--cluster`."""
    if cluster:
        return cluster_server(f"{name}-cluster", models_dir, settings, {}, log_dir=log_dir)
    return audioserve(name, models_dir, settings, log_dir=log_dir)


# -- the report ---------------------------------------------------------------------------

def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def cpu_ms_per_request(point: Point | None) -> dict[str, float]:
    """CPU ms per answered request, by role, over one sweep point."""
    if point is None or not point.load.ok:
        return {}
    return {role: 1000.0 * s / point.load.ok for role, s in point.cpu_s.items() if s > 0}


def _grouped(cpu: dict[str, float]) -> dict[str, float]:
    groups = {"proxy": 0.0, "ingress": 0.0, "models": 0.0, "ray": 0.0}
    for role, ms in cpu.items():
        if role in PROXY_ROLES:
            groups["proxy"] += ms
        elif role == "ingress":
            groups["ingress"] += ms
        elif role in MODELS:
            groups["models"] += ms
        else:
            groups["ray"] += ms
    return groups


def model_ms_per_item(cfg: ConfigResult | None, kind: str, queue: str) -> float:
    """The replica's measured cost per item at the batch size its sizer chose."""
    if cfg is None:
        return math.nan
    for model in cfg.models.get("data", []):  # type: ignore[attr-defined]
        if model.get("id") == kind:
            batching: dict[str, Any] = model.get("batching") or {}
            described = batching.get(queue, batching) if queue else batching
            costs = described.get("ms_per_unit") or {}
            limit = str(described.get("size_limit", ""))
            if limit in costs:
                return float(costs[limit])
            if costs:
                return min(float(v) for v in costs.values())
    return math.nan


def cluster_section(configs: list[ConfigResult], endpoints: list[str], cores: int,
                    concurrency: int = 32) -> list[str]:
    by_key = {c.key: c for c in configs if c.sweep}
    single, one, two = by_key.get(SINGLE), by_key.get(ONE), by_key.get(TWO)
    if one is None or single is None:
        return []
    variants = [c for c in (one, by_key.get(PYPROXY)) if c is not None]
    lines = ["## Cluster (Ray Serve, `python -m service.cluster`)", "",
             "Same bodies and sweep through Ray Serve (HAProxy ingress), one replica per model "
             f"(`{ONE}`), then two CLAP replicas (`{TWO}`), against the single process "
             f"(`{SINGLE}`) measured in this run. Added latency: P50 at c=1, cluster minus "
             "single process.", ""]
    rows = []
    for ep in endpoints:
        for cfg in variants:
            s1, c1 = single.at(ep, 1), cfg.at(ep, 1)
            sn, cn = single.at(ep, concurrency), cfg.at(ep, concurrency)
            tn = two.at(ep, concurrency) if two and cfg is one else None
            added = (c1.load.p50_ms - s1.load.p50_ms) if s1 and c1 else math.nan
            rate = cn.load.ok_rps / sn.load.ok_rps if sn and cn and sn.load.ok_rps else math.nan
            rows.append([
                ep, cfg.key, _fmt(s1.load.p50_ms if s1 else math.nan),
                _fmt(c1.load.p50_ms if c1 else math.nan),
                f"{_fmt(added)} ({_verdict(added <= TARGET_ADDED_MS)})",
                _fmt(sn.load.ok_rps if sn else math.nan), _fmt(cn.load.ok_rps if cn else math.nan),
                f"{_fmt(rate, 2)} ({_verdict(rate >= TARGET_RATIO)})",
                _fmt(tn.load.ok_rps if tn else math.nan),
                _fmt(tn.load.ok_rps / cn.load.ok_rps if tn and cn and cn.load.ok_rps
                     else math.nan, 2)])
    lines += _table(["endpoint", "config", "single P50 c=1", "cluster P50 c=1",
                     f"added ms (<= {TARGET_ADDED_MS:g})", f"single req/s c={concurrency}",
                     f"cluster req/s c={concurrency}", f"cluster / single (>= {TARGET_RATIO})",
                     f"2 CLAP replicas req/s c={concurrency}", "2 / 1 replicas"], rows)
    return lines + _model_section(single, one, two, variants[1:], endpoints, cores,
                                  concurrency)


def _model_section(single: ConfigResult, one: ConfigResult, two: ConfigResult | None,
                   others: list[ConfigResult], endpoints: list[str], cores: int,
                   concurrency: int) -> list[str]:
    lines = [f"### Scaling model: CPU ms per request at c={concurrency}", "",
             "From the CPU seconds each process used during the point, over the requests "
             "answered (`proxy`: HAProxy and Ray's proxy actors; `ingress`: the app and its "
             "CPU work; "
             "`models`: the model replicas; `ray`: Ray's controller, raylet, GCS, agents). "
             f"Predicted: {cores} cores x 1000 / all CPU ms per request (on CPU the models "
             "share the cores, so replicas cannot add throughput beyond it).", ""]
    rows = []
    for ep in endpoints:
        for cfg in (single, one, two, *others):
            point = cfg.at(ep, concurrency) if cfg else None
            cpu = cpu_ms_per_request(point)
            if not cpu or point is None or cfg is None:
                continue
            total = sum(cpu.values())
            g = _grouped(cpu) if cfg.key != SINGLE else {"proxy": math.nan, "ingress": total,
                                                          "models": math.nan, "ray": math.nan}
            predicted = cores * 1000.0 / total
            rows.append([ep, cfg.key, _fmt(g["proxy"]), _fmt(g["ingress"]), _fmt(g["models"]),
                         _fmt(g["ray"]), _fmt(total), _fmt(predicted),
                         _fmt(point.load.ok_rps), _fmt(point.load.ok_rps / predicted, 2)])
    lines += _table(["endpoint", "config", "proxy", "ingress", "models", "ray", "all",
                     "predicted req/s", "measured req/s", "measured / predicted"], rows)
    clap_ms = model_ms_per_item(one, "clap", "audio")
    emo_ms = model_ms_per_item(one, "emotion2vec", "")
    point = one.at("classify", concurrency)
    http = sum(_grouped(cpu_ms_per_request(point)).get(k, 0.0) for k in ("proxy", "ingress"))
    lines += [
        "Model side, from the replicas' own /v1/models (`ms_per_unit` at the batch size "
        f"their sizer chose): CLAP audio {_fmt(clap_ms, 2)} ms per window, Emotion2Vec+ "
        f"{_fmt(emo_ms, 4)} ms per sample of audio. On a GPU node these come from the GPU's "
        "own calibration; the prediction for N GPUs (one model replica each) and K cores "
        "of proxies + ingress replicas is min(N x 1000 / w, K x 1000 / c_http).",
        "",
        f"For /classify with one window per request here: w = {_fmt(clap_ms, 2)} ms, "
        f"c_http = {_fmt(http, 2)} ms (proxy + ingress), so each GPU replica adds up to "
        f"{_fmt(1000.0 / clap_ms if clap_ms else math.nan)} req/s of model time and each "
        f"core of proxy + ingress {_fmt(1000.0 / http if http else math.nan)} req/s; N "
        "nodes with C cores and G GPUs each: min(N G 1000 / w, N C 1000 / c_http), with "
        "the proxy on every node (`AUDIOSERVE_CLUSTER_PROXY_LOCATION=EveryNode`).", ""]
    return lines
