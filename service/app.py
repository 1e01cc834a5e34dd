"""The app factory: settings -> FastAPI app with lifespan, middleware, errors and routes."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from service.edge.middleware import (
    AuthMiddleware,
    HeadAsGetMiddleware,
    OriginMiddleware,
    RequestContextMiddleware,
)
from service.edge.read_limits import BodyBudget, BodyLimit, ReadLimitsMiddleware, ReadTimeouts
from service.errors import error_formatters, install_handlers
from service.pipelines.loader import ModelLoader, packs_to_load
from service.routes.openapi import install_openapi
from service.routes.responses import METRICS_ANSWER, OPERATIONS_TAG, READINESS_ANSWERS, Health
from service.routes.web import (
    DOCS_ASSETS_PREFIX,
    SWAGGER_UI_PARAMETERS,
    UI_PREFIX,
    add_docs,
    add_page,
)
from service.runtime.admission import AdmissionGate, CpuWorkers
from service.runtime.allocator import pin_malloc_thresholds
from service.runtime.metrics import Metrics
from service.runtime.packs import ModelPack
from service.seam.handoff import LocalSeam, Seam
from service.seam.replicas import ReplicaHeaderMiddleware
from service.settings import MODEL_NAMES, Settings

log = logging.getLogger("audioserve")

ROUTE_MODULES = ("service.routes.openai_models", "service.routes.clap",
                 "service.routes.openai_embeddings", "service.routes.emotion",
                 "service.routes.tts", "service.routes.openai_speech", "service.routes.voices",
                 "service.routes.openai_voices", "service.routes.live_analysis",
                 "service.routes.speech_stream")
UPLOAD_PATHS = frozenset({"/classify", "/embed/audio", "/emotion", "/v1/embeddings",
                          "/v1/audio/voices"})
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def create_app(settings: Settings | None = None, seam: Seam | None = None,
               packs: list[ModelPack] | None = None) -> FastAPI:
    """`seam`: where the models run (`service.seam.handoff`); default: in this process. `packs`:
    the packs to serve, already checked (`packs_to_load`); default: checked at start-up."""
    settings = settings or Settings()
    metrics = Metrics()
    cpu = CpuWorkers(settings.cpu_threads or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.pin_malloc_thresholds:  # before the packs' first large arrays
            pin_malloc_thresholds()
        # a missing or broken pack fails start-up here, naming the file
        to_load = packs if packs is not None else packs_to_load(settings)
        loader = ModelLoader(to_load, settings, metrics, app.state.pipelines, cpu, app.state.seam)
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

    # Swagger UI's and ReDoc's files served by the app (fastapi-offline): /docs, /redoc
    # work offline (service/routes/web.py)
    app = FastAPIOffline(title="audioserve", version="0.1.0", lifespan=lifespan,
                         docs_url=None, redoc_url=None, static_url=DOCS_ASSETS_PREFIX,
                         swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
                         # no trailing-slash redirect: Starlette built its Location from the
                         # client's Host header (`/healthz/` is a 404 instead)
                         redirect_slashes=False)
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

    app.state.cpu = cpu
    app.state.live_streams = {"open": 0}  # service/routes/live_analysis.py
    app.state.speech_sessions = {"open": 0}  # service/routes/speech_stream.py
    # outermost last: request ids and logs, then the body's limits, the page's origin and
    # the API key
    if settings.api_key is not None:
        app.add_middleware(AuthMiddleware, key=settings.api_key.get_secret_value(),
                           is_public=public_paths(settings))
    app.add_middleware(OriginMiddleware, settings=settings)
    app.add_middleware(ReadLimitsMiddleware, limit_for=body_limits(settings),
                       timeouts=ReadTimeouts(idle_s=settings.body_idle_timeout_s,
                                             total_s=settings.body_timeout_s,
                                             min_rate=settings.body_min_rate),
                       budget=BodyBudget(settings.max_body_bytes_in_flight))
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(ReplicaHeaderMiddleware)  # X-Audioserve-Replica (service/seam/replicas.py)
    _add_health_routes(app)
    add_docs(app)
    if settings.ui:  # the web page: public, it asks for the API key on a 401
        add_page(app)

    formatters = {}
    for module_name in ROUTE_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        router = importlib.import_module(module_name).router
        app.include_router(router)
        formatters.update(error_formatters(router.routes))
    install_handlers(app, formatters)
    install_openapi(app, settings, public_paths(settings))
    return app


def public_paths(settings: Settings) -> Callable[[str], bool]:
    """Paths served without the API key: health, metrics, the web page (which asks for
    the key when the API answers 401) and, when `docs_public`, the API docs."""
    public = set(PUBLIC_PATHS) | (set(DOCS_PATHS) if settings.docs_public else set())
    prefixes = (f"{UI_PREFIX}/", *((f"{DOCS_ASSETS_PREFIX}/",) if settings.docs_public else ()))

    def is_public(path: str) -> bool:
        return path in public or path.startswith(prefixes)

    return is_public


def body_limits(settings: Settings) -> Callable[[str], BodyLimit]:
    """Uploads may carry `max_upload_bytes` of audio (base64 JSON adds a third; the
    exact audio limit is checked in service.routes.uploads); every other body is small JSON."""
    upload = BodyLimit(settings.upload_body_bytes,
                       f"an upload's audio may be {settings.max_upload_bytes} bytes, "
                       "AUDIOSERVE_MAX_UPLOAD_BYTES; the body may be larger by what base64 "
                       "JSON adds to it")
    json_only = BodyLimit(settings.max_json_bytes, "AUDIOSERVE_MAX_JSON_BYTES")

    def limit_for(path: str) -> BodyLimit:
        return upload if path in UPLOAD_PATHS else json_only

    return limit_for


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=[OPERATIONS_TAG])
    async def healthz() -> dict[str, str]:
        """The process is alive (it may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=READINESS_ANSWERS, tags=[OPERATIONS_TAG])
    async def readyz(request: Request) -> JSONResponse:
        """200 once every pack this server was asked to serve is loaded and warm and every
        worker is alive (an empty server only with `AUDIOSERVE_MODELS=none`)."""
        loader: ModelLoader | None = getattr(request.app.state, "loader", None)
        if loader is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        status = loader.status()
        return JSONResponse(status.as_dict(), status_code=200 if status.ready else 503)

    @app.get("/metrics", response_class=Response, responses=METRICS_ANSWER,
             tags=[OPERATIONS_TAG])
    async def metrics_endpoint(request: Request) -> Response:
        """The service's metrics (requests, batches, queues, live streams, audio SLOs)."""
        seam: Seam = request.app.state.seam
        data = await seam.metrics(request.app.state.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)
