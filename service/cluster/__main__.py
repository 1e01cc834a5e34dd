"""`python -m service.cluster`: deploy audioserve on the Ray cluster at `RAY_ADDRESS`
(a new local one when unset) and serve the API through Ray Serve's HTTP ingress (HAProxy) on
`AUDIOSERVE_HOST:AUDIOSERVE_PORT`, until SIGINT/SIGTERM. Same `AUDIOSERVE_*` settings and
flags as `python -m service`, plus `AUDIOSERVE_CLUSTER_*` (service/cluster/config.py).

`python -m service.cluster --print-env` prints, as shell `export` lines, what each node's
environment needs before `ray start` (Ray's settings and the HTTP limits its HAProxy
holds), from the same settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shlex
import signal
import sys
import time

from service.cli import (
    add_setting_flags,
    build_settings,
    environment,
    fail,
    flag_values,
    unknown_variables,
)
from service.cluster.config import ClusterSettings
from service.runtime.packs import ModelPack
from service.settings import Settings

PROG = "python -m service.cluster"
EXIT_CANNOT_SERVE = 1
EXIT_INTERRUPTED = 130
log = logging.getLogger("audioserve.cluster")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 stopped, 1 cannot serve what it was asked to, 2 bad "
               "arguments or settings, 130 interrupted while starting. A second Ctrl-C "
               "while stopping skips the waiting.")
    p.add_argument("--print-env", action="store_true",
                   help="print each node's environment for `ray start` as export lines, "
                        "then exit (starts nothing)")
    p.add_argument("--address", help="Ray cluster to deploy on (default: RAY_ADDRESS, "
                                     "else a new local one)")
    add_setting_flags(p)
    return p


def load(args: argparse.Namespace) -> tuple[Settings, ClusterSettings]:
    """(Settings, ClusterSettings), or exit 2 with a line per problem: the same check of
    `AUDIOSERVE_*` and `AUDIOSERVE_CLUSTER_*` variables."""
    problems = unknown_variables([Settings, ClusterSettings], environment())
    settings = build_settings(Settings, flag_values(args), problems)
    cluster = build_settings(ClusterSettings, {}, problems)
    if settings is not None and settings.port == 0:
        source = "--port" if args.port is not None else "AUDIOSERVE_PORT"
        problems.append(f"{source}=0: the cluster's HTTP ingress (HAProxy) needs a fixed port")
    if problems or settings is None or cluster is None:
        fail(PROG, problems)
    return settings, cluster


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings, cluster = load(args)
    from service.cluster.runtime import node_environment, ray_environment

    if args.print_env:
        for key, value in node_environment(settings).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0

    from service.errors import PackError
    from service.logs import configure_logging
    from service.pipelines.loader import packs_to_load

    if importlib.util.find_spec("ray") is None:
        print(f"{PROG}: Ray is not installed here: pip install -e '.[cluster]' (README, "
              "Running on a cluster)", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    from service.runtime.sessions import resolve_provider

    configure_logging(settings.log_level)
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        fit_local_open_file_limit(settings)  # exits 2 when HAProxy's cannot hold the cap
    try:  # before Ray starts: a missing or broken pack is one line, not a failed deploy
        if address == "local":  # the replicas run here: a provider this machine lacks
            resolve_provider(settings.provider, log_fallback=False)
        packs = packs_to_load(settings)
    except (PackError, RuntimeError) as exc:
        log.critical("cannot serve: %s", exc)
        return EXIT_CANNOT_SERVE
    ray_environment(os.environ, settings)  # before ray is imported: some is read at import
    return serve_until_stopped(settings, cluster, packs, address)


def fit_local_open_file_limit(settings: Settings) -> None:
    """The Ray processes a local cluster starts inherit this process's open-file limits,
    HAProxy among them, which holds every client connection and one to a replica for
    each: it raises its own soft limit as far as the hard one, and past that only logs an
    alert in Ray's log folder and runs on with too few. So a hard limit that cannot hold
    HAProxy's connections is refused here, as one process refuses its own; the soft limit
    is raised for Ray's other processes. (Each ingress replica checks its own too, on
    any cluster: `IngressReplica`.)"""
    from service.cluster.runtime import HAPROXY_DESCRIPTORS_PER_CONNECTION
    from service.edge.open_files import OpenFileShortage, fit_open_file_limit

    try:
        fit_open_file_limit(settings.max_connections, held=0, holder="HAProxy",
                            per_connection=HAPROXY_DESCRIPTORS_PER_CONNECTION)
    except OpenFileShortage as exc:
        fail(PROG, [str(exc)])


def serve_until_stopped(settings: Settings, cluster: ClusterSettings, packs: list[ModelPack],
                        address: str) -> int:
    from ray import serve

    from service.cluster.app import build
    from service.cluster.runtime import init_ray, start_serve
    from service.edge.server import base_url
    from service.logs import adopt

    for name in ("ray", "ray.serve"):  # the driver's Ray and Serve lines in the one format
        adopt(name)

    log.info("starting Ray (%s) and Ray Serve", address)
    init_ray(address)
    status = 0
    try:
        start_serve(settings, cluster)
        log.info("deploying application %s: %s", cluster.app_name,
                 ", ".join(p.kind for p in packs) or "no model")
        serve.run(build(settings, cluster, packs), name=cluster.app_name, route_prefix="/",
                  blocking=False)
        url = base_url(settings.host, settings.port)
        log.info("audioserve on Ray Serve (cluster %s): %s/ , API docs %s/docs", address, url,
                 url)
        wait_for_signal()
    except Exception as exc:  # Serve's deploy failures: the replica's error in the message
        log.critical("cannot serve: %s", exc)
        status = EXIT_CANNOT_SERVE
    except KeyboardInterrupt:
        log.info("interrupted while starting")
        status = EXIT_INTERRUPTED
    stop(cluster.app_name, local=address == "local")
    return status


def wait_for_signal() -> None:
    stopping: list[int] = []  # a signal handler may only set a flag: an Event's lock,

    def on_signal(signum: int, _: object) -> None:  # taken again inside Event.wait, deadlocks
        stopping.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stopping:
        time.sleep(0.2)


def stop(app_name: str, *, local: bool) -> None:
    """Take the application down (and the cluster, where this process started it), saying
    what each step waits for; a second Ctrl-C skips the waiting, not Ray's shutdown."""
    import ray
    from ray import serve

    drain_s = os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    try:
        log.info("stopping: deleting application %s: Ray Serve drains its ingress replicas "
                 "for %s s (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, so load balancers "
                 "stop sending) and lets requests finish; Ctrl-C again to skip", app_name,
                 drain_s)
        try:
            serve.delete(app_name)
        except Exception as exc:  # never deployed (a failed start): nothing to delete
            log.info("no application to delete (%s)", exc)
        if local:
            log.info("stopping: shutting down Ray Serve (controller and HTTP proxies)")
            serve.shutdown()
    except KeyboardInterrupt:
        log.info("stopping at once (second Ctrl-C)")
    if local:  # this process started the cluster: take all of it down
        log.info("stopping: shutting down Ray (this machine's Ray processes)")
        ray.shutdown()
    log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
