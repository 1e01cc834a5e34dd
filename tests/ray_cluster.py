"""A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`) with
audioserve deployed on it, for tests: `with ray_audioserve(settings, cluster) as url:`.

The cluster gets a temporary directory of its own, HAProxy's files included, so its
processes are found (and checked gone) by that path alone: other Ray clusters on the
machine are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.cluster.runtime import (
    free_port,
    haproxy_files_under,
    haproxy_limits,
    http_options,
    ray_environment,
)
from service.settings import Settings


@dataclass(frozen=True)
class RayAudioserve:
    url: str
    app_name: str
    temp_dir: Path


def processes_under(path: Path) -> list[int]:
    """Pids whose command line names `path` (every process of a cluster started there)."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"cluster not ready after {timeout_s:g} s: {last}")


@contextmanager
def ray_audioserve(settings: Settings, cluster_args: dict[str, object], *, nodes: int = 2,
                   cpus_per_node: int = 2) -> Iterator[RayAudioserve]:
    temp_dir = Path(tempfile.mkdtemp(prefix="asr", dir=_short_temp_root()))  # socket paths
    # Everything of this cluster's under temp_dir, nothing of it in a shared /tmp/ray: the
    # nodes get temp_dir, and RAY_TMPDIR moves Ray's defaults there too (Cluster writes its
    # address file to the default folder, which exists only after Ray once ran there).
    (temp_dir / "ray").mkdir()
    with _restored_environment():
        os.environ["RAY_TMPDIR"] = str(temp_dir)
        ray_environment(os.environ, settings)  # before the nodes start: they inherit it
        os.environ.update(haproxy_limits(settings))  # this cluster's, not an earlier one's
        haproxy_files_under(os.environ, temp_dir)  # its HAProxy is found, and gone, by path
        yield from _deployed(settings, cluster_args, temp_dir, nodes, cpus_per_node)


def _deployed(settings: Settings, cluster_args: dict[str, object], temp_dir: Path,
              nodes: int, cpus_per_node: int) -> Iterator[RayAudioserve]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from service.cluster.app import build
    from service.cluster.config import ClusterSettings

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus_per_node, "include_dashboard": False, "temp_dir": str(temp_dir)})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node, temp_dir=str(temp_dir))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        port = free_port()
        # one proxy: every "node" is this machine, so one port can be bound only once
        local = settings.model_copy(update={"host": "127.0.0.1", "port": port})
        serve.start(http_options=http_options(local, "HeadOnly"))
        app_name = "audioserve"
        cluster_settings = ClusterSettings(_env_file=None, **cluster_args)  # type: ignore[arg-type]
        serve.run(build(settings, cluster_settings), name=app_name, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield RayAudioserve(url, app_name, temp_dir)
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            _wait_gone(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def _restored_environment() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _short_temp_root() -> str:
    """The temporary root (TMPDIR honoured), or /tmp where that path is too long for the
    Unix socket paths Ray builds under a node's temp dir (107 bytes at most)."""
    root = tempfile.gettempdir()
    return root if len(root) <= 24 else "/tmp"


def _wait_gone(temp_dir: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := processes_under(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left running after the cluster shut down: {left}"
