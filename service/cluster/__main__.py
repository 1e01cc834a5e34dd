"""`python -m service.cluster`: deploy audioserve on the Ray cluster at `RAY_ADDRESS`
(a new local one when unset) and serve the API through Ray Serve's HTTP ingress (HAProxy) on
`AUDIOSERVE_HOST:AUDIOSERVE_PORT`, until SIGINT/SIGTERM. Same `AUDIOSERVE_*` settings as
`python -m service`, plus `AUDIOSERVE_CLUSTER_*` (service/cluster/config.py).

`python -m service.cluster --print-env` prints, as shell `export` lines, what each node's
environment needs before `ray start` (Ray's settings and the HTTP limits its HAProxy
holds), from the same settings.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time

from service.cluster.runtime import node_environment, ray_environment
from service.settings import Settings

if sys.argv[1:] == ["--print-env"]:
    for key, value in node_environment(Settings()).items():
        print(f"export {key}={shlex.quote(value)}")
    sys.exit(0)

ray_environment(os.environ, Settings())  # before ray is imported: some is read at import

import ray  # noqa: E402
from ray import serve  # noqa: E402

from service.cluster.app import build  # noqa: E402
from service.cluster.config import ClusterSettings  # noqa: E402
from service.cluster.runtime import init_ray, start_serve  # noqa: E402

log = logging.getLogger("audioserve.cluster")


def main() -> None:
    settings, cluster = Settings(), ClusterSettings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = os.environ.get("RAY_ADDRESS") or "local"
    init_ray(address)
    start_serve(settings, cluster)
    serve.run(build(settings, cluster), name=cluster.app_name, route_prefix="/",
              blocking=False)
    log.info("audioserve on Ray Serve (cluster %s): http://%s:%d", address, settings.host,
             settings.port)
    stopping: list[int] = []  # a signal handler may only set a flag: an Event's lock,
    for sig in (signal.SIGINT, signal.SIGTERM):  # taken again inside Event.wait, deadlocks
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    while not stopping:
        time.sleep(0.2)
    log.info("stopping: deleting application %s", cluster.app_name)
    serve.delete(cluster.app_name)
    if address == "local":  # this process started the cluster: take all of it down
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
