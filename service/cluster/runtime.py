"""Starting Ray and Ray Serve with only what audioserve needs.

Ray's own processes take CPU from the work on a small machine, so what the service does
not use is off: no dashboard, no usage statistics. Environment settings here are defaults
(`setdefault`): a deployment can still set them otherwise.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

SERVE_ENV = {
    # Ray Serve's documented fast path (gRPC between replicas, user code and handle router
    # on the replica's own event loop, GC frozen after start-up), but keeping its HTTP
    # proxy, which talks to the ingress over gRPC too. On this 2-core machine: proxy hop
    # 10 -> 3.6 ms, a handle call with 256 KB 7.2 -> 2.1 ms (docs/cluster.md).
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
}
"""For every Serve process: the replicas (through the job's runtime environment, also on
an existing cluster) and, where this process starts the cluster, the proxies too."""

RAY_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", **SERVE_ENV}
"""For the process that starts Ray (and so for every Ray process it starts)."""


def ray_environment(env: MutableMapping[str, str]) -> None:
    for key, value in RAY_DEFAULTS.items():
        env.setdefault(key, value)


def init_ray(address: str, **overrides: Any) -> None:
    """Connect to the cluster at `address`, or start one (`local`)."""
    import ray

    env = {k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}
    options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                               "runtime_env": {"env_vars": env}}
    options.update(overrides)
    ray.init(address=address, **options)


def start_serve(settings: Any, cluster: Any) -> None:
    """Ray Serve's HTTP proxy on the service's host and port."""
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "location": cluster.proxy_location})
