"""The ingress deployment: `service.app`'s FastAPI app, its models behind `RaySeam`.

The app is built in the replica (`__serve_build_asgi_app__`, after the constructor has the
model deployments' handles), so routes, error bodies, headers and the OpenAPI are those
of `python -m service`. Ray Serve runs the app's lifespan; the app keeps its state on
`app.state`, not in lifespan state, which Ray Serve does not pass to requests (ray#45395).
The pipelines' CPU work (decode, features, tokenising, encoding) runs here, in the app's
own thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.cluster.remote import RaySeam, SeamOptions
from service.edge.open_files import fit_open_file_limit
from service.edge.server import serve_auto_as_guarded
from service.settings import Settings


class IngressReplica:
    def __init__(self, settings: Settings, models: Mapping[str, DeploymentHandle],
                 options: SeamOptions) -> None:
        context = serve.get_replica_context()
        self.replica = f"{context.deployment}#{context.replica_id.unique_id}"
        app_name, deployment = context.app_name, context.deployment
        self.settings = settings
        # HAProxy may send this replica every connection it holds: a limit that cannot
        # hold them fails the replica here, naming both numbers, not its accept() later
        fit_open_file_limit(settings.max_connections, holder="an ingress replica")
        serve_auto_as_guarded(settings)  # Ray starts this replica's uvicorn after __init__
        self.seam = RaySeam(models, options, replica=self.replica,
                            peers=lambda: serve.get_deployment_handle(deployment, app_name))
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        self._app = create_app(self.settings, seam=self.seam)
        self._app.add_middleware(OneRequestId)
        return self._app

    async def replica_metrics(self) -> tuple[str, list[Any]]:
        """This ingress replica's own metrics, for a /metrics scrape on another one."""
        assert self._app is not None
        return self.replica, list(self._app.state.metrics.registry.collect())


Ingress = serve.ingress()(IngressReplica)


class OneRequestId:
    """Ray Serve's proxy sends every request with an `X-Request-ID` (the client's, or one
    it made) and adds that id to the response itself; the app's own copy of the same id is
    dropped so the client sees the header once, as from `python -m service`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope.get("headers", []) if k == b"x-request-id"), None)

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start" and sent is not None:
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not (k.lower() == b"x-request-id" and v == sent)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_once)
