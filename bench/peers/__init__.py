"""Peer servers for the CLAP audio graph (LitServe, Ray Serve), started like audioserve:
as separate processes on a free loopback port, with the same pack, batch size, wait,
deadline, ORT threads and parallel workers (LitServe's workers per device, Ray Serve's
replicas, audioserve's batch workers). They need the `bench` extra (litserve, ray[serve])."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.server import REPO, ServerProcess, free_port, with_pythonpath

PEERS = {
    "litserve": ("bench.peers.litserve_clap", "litserve", "/health"),
    # Serve's own /-/healthz answers 200 while the application is still deploying (the
    # first run measured a peer that served nothing): a GET of the route needs a replica
    "rayserve": ("bench.peers.rayserve_clap", "ray.serve", "/classify"),
}


@dataclass(frozen=True)
class PeerTuning:
    max_batch: int
    wait_ms: float
    threads: int
    workers: int
    timeout_s: float
    max_queue: int


def missing(peer: str) -> str | None:
    """The module a peer needs that is not installed, or None."""
    module = PEERS[peer][1]
    try:
        return None if importlib.util.find_spec(module) is not None else module
    except ModuleNotFoundError:
        return module


def peer_server(peer: str, pack_dir: Path, tuning: PeerTuning, log_dir: Path) -> ServerProcess:
    module, _, ready = PEERS[peer]
    port = free_port()
    cmd = [sys.executable, "-m", module, "--pack", str(pack_dir.resolve()), "--port", str(port),
           "--max-batch", str(tuning.max_batch), "--wait-ms", str(tuning.wait_ms),
           "--threads", str(tuning.threads), "--workers", str(tuning.workers),
           "--timeout-s", str(tuning.timeout_s)]
    if peer == "rayserve":
        cmd += ["--max-ongoing", str(tuning.max_queue)]
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": with_pythonpath(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    return ServerProcess(peer, cmd, port, env,
                         cwd=REPO, ready_path=ready, log_path=log_dir / f"{peer}.log")
