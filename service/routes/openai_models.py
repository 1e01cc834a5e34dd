"""`GET /v1/models` and `GET /v1/models/{model_id}`: OpenAI's model objects (`id`,
`object`, `created`, `owned_by`) for the loaded packs, each with what describes the pack
here (precision, provider, batching, graphs, endpoints, replicas). `created` is when the
pack was built (its manifest's modification time): the same on every replica. Errors take
OpenAI's shape (`type`, `param`), as the other `/v1` routes' do."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request

from service.errors import NotFound
from service.pipelines.base import Pipeline
from service.routes.openai_speech import OpenAIRoute
from service.routes.responses import ModelCard, ModelList, openai_errors, path_example
from service.runtime.packs import MANIFEST
from service.seam.handoff import Seam

router = APIRouter(tags=["models"], route_class=OpenAIRoute)  # OpenAI's error shape
OWNER = "audioserve"


async def _card(request: Request, kind: str, pipeline: Pipeline) -> dict[str, Any]:
    seam: Seam = request.app.state.seam
    manifest = pipeline.pack.root / MANIFEST
    created = int(manifest.stat().st_mtime) if manifest.is_file() else 0
    return {**pipeline.info(), "created": created, "owned_by": OWNER,
            "replicas": await seam.replicas(kind)}


@router.get("/v1/models", response_model=ModelList, responses=openai_errors(401))
async def list_models(request: Request) -> dict[str, Any]:
    """The loaded models."""
    pipelines: dict[str, Pipeline] = request.app.state.pipelines
    return {"object": "list",
            "data": [await _card(request, kind, p) for kind, p in pipelines.items()]}


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=openai_errors(401, 404))
async def retrieve_model(model_id: Annotated[str, path_example("clap")],
                         request: Request) -> dict[str, Any]:
    """One loaded model: `clap`, `emotion2vec` or `chattts`."""
    pipelines: dict[str, Pipeline] = request.app.state.pipelines
    pipeline = pipelines.get(model_id)
    if pipeline is None:
        loaded = ", ".join(sorted(pipelines)) or "none"
        raise NotFound(f"model {model_id[:80]!r} is not loaded here (loaded: {loaded})")
    return await _card(request, model_id, pipeline)
