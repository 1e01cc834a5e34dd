"""Peer: the CLAP classify graph served by Ray Serve with `@serve.batch`.

`python -m bench.peers.rayserve_clap --pack models/clap --port 8102 --max-batch 8 --wait-ms 5`

`--workers` replicas (audioserve's batch workers); `@serve.batch(max_batch_size,
batch_wait_timeout_s)` set to audioserve's `max_batch_size` and `max_wait_ms`;
`max_ongoing_requests` raised from Ray's default (5, which would cap every batch at 5) to
audioserve's queue size; the request timeout to its deadline; the same ORT threads. Decode
+ log-mel run in a worker thread before the batched call, as audioserve does them before
its batcher. Ready when GET /-/healthz answers 200.
"""

# no `from __future__ import annotations`: Ray Serve inspects signatures at run time
import asyncio
import signal
import threading
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from bench.peers.clap_core import ClapCore, Prepared, labels_from_form, peer_arguments


def build_app(pack: Path, threads: int, max_batch: int, wait_ms: float,
              max_ongoing: int, replicas: int) -> Any:
    from ray import serve

    @serve.deployment(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                      ray_actor_options={"num_cpus": 0})
    class ClapDeployment:
        def __init__(self) -> None:
            self.core = ClapCore(pack, threads)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_ms / 1000.0)
        async def classify(self, items: list[Prepared]) -> list[dict[str, Any]]:
            return await asyncio.to_thread(self.core.classify_batch, items)

        async def __call__(self, request: Request) -> JSONResponse:
            if request.method == "GET":  # readiness: answered only once a replica is up
                return JSONResponse({"ready": True})
            form = await request.form()
            upload = form.get("file")
            data = await upload.read() if hasattr(upload, "read") else b""
            labels = labels_from_form(form.getlist("labels"))
            item = await asyncio.to_thread(self.core.prepare, data, labels)
            return JSONResponse(await self.classify(item))

    return ClapDeployment.bind()


def main() -> None:
    p = peer_arguments(__doc__)
    p.add_argument("--max-ongoing", type=int, default=256)
    args = p.parse_args()
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")  # keep even Ray's own traffic on loopback
    serve.start(http_options={"host": "127.0.0.1", "port": args.port,
                              "request_timeout_s": args.timeout_s})
    app = build_app(args.pack.resolve(), args.threads, args.max_batch, args.wait_ms,
                    args.max_ongoing, args.workers)
    serve.run(app, route_prefix="/classify", blocking=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # the bench stops us with SIGINT
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    serve.shutdown()
    ray.shutdown()  # this driver started the local cluster: take raylet and GCS down too


if __name__ == "__main__":
    main()
