"""The app factory: settings -> FastAPI app with lifespan, middleware, errors and routes."""

from __future__ import annotations

import hmac
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.admission import AdmissionGate, CpuWorkers
from service.allocator import pin_malloc_thresholds
from service.errors import Unauthorized, install_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.models import ModelLoader, packs_to_load
from service.replicas import ReplicaHeaderMiddleware
from service.seam import LocalSeam, Seam
from service.settings import MODEL_NAMES, Settings

log = logging.getLogger("audioserve")

ROUTE_MODULES = ("service.routes.clap", "service.routes.emotion", "service.routes.tts",
                 "service.routes.openai_speech", "service.routes.voices")
_JSON_OVERHEAD_BYTES = 64 * 1024


def create_app(settings: Settings | None = None, seam: Seam | None = None) -> FastAPI:
    """`seam`: where the models run (`service.seam`); default: in this process."""
    settings = settings or Settings()
    metrics = Metrics()
    cpu = CpuWorkers(settings.cpu_threads or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.pin_malloc_thresholds:  # before the packs' first large arrays
            pin_malloc_thresholds()
        packs = packs_to_load(settings)  # a broken pack fails start-up here, naming the file
        loader = ModelLoader(packs, settings, metrics, app.state.pipelines, cpu, app.state.seam)
        app.state.loader = loader
        if settings.load_in_background:  # serve /healthz and a 503 /readyz while warming
            loader.start()
        else:
            await loader.run()
        try:
            yield
        finally:
            await loader.close()
            await app.state.seam.close()
            cpu.shutdown()

    app = FastAPI(title="audioserve", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pipelines = {}
    app.state.seam = seam or LocalSeam()
    app.state.admission = {
        kind: AdmissionGate(kind, max_in_flight=settings.max_in_flight,
                            timeout_s=settings.request_timeout_s,
                            wait_fraction=settings.admission_wait_fraction, metrics=metrics)
        for kind in MODEL_NAMES
    }

    # base64 JSON is 4/3 of the audio; the exact audio limit is checked in service.uploads
    body_limit = settings.max_upload_bytes * 4 // 3 + _JSON_OVERHEAD_BYTES
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_limit)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(ReplicaHeaderMiddleware)  # X-Audioserve-Replica (service/replicas.py)
    install_handlers(app)
    _add_health_routes(app)

    protected = [Depends(require_api_key)]
    app.add_api_route("/v1/models", list_models, methods=["GET"], dependencies=protected)
    for module_name in ROUTE_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        app.include_router(importlib.import_module(module_name).router, dependencies=protected)
    return app


async def require_api_key(request: Request) -> None:
    """Bearer-token check (constant-time) when AUDIOSERVE_API_KEY is set."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized(
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def list_models(request: Request) -> dict[str, Any]:
    pipelines = request.app.state.pipelines
    seam: Seam = request.app.state.seam
    data = [{**p.info(), "replicas": await seam.replicas(kind)} for kind, p in pipelines.items()]
    return {"object": "list", "data": data}


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process is alive (it may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """200 once every pack is loaded and warm and every worker is alive."""
        loader: ModelLoader | None = getattr(request.app.state, "loader", None)
        if loader is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        status = loader.status()
        return JSONResponse(status.as_dict(), status_code=200 if status.ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        seam: Seam = request.app.state.seam
        data = await seam.metrics(request.app.state.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)
