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
from service.tts.model_names import unknown_model

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


def _kind_named(model_id: str, pipelines: dict[str, Pipeline]) -> str | None:
    """The loaded model that `model_id` names as the routes take it: its kind, a speech
    model name `/v1/audio/speech` takes for ChatTTS (`tts-1`, `gpt-4o-mini-tts`, ...), or
    the checkpoint a pack was exported from (`/v1/embeddings` takes CLAP's)."""
    if model_id in pipelines:
        return model_id
    if "chattts" in pipelines and unknown_model(model_id) is None:
        return "chattts"
    return next((kind for kind, p in pipelines.items() if p.info()["source"] == model_id),
                None)


@router.get("/v1/models/{model_id:path}", response_model=ModelCard,
            responses=openai_errors(401, 404))
async def retrieve_model(model_id: Annotated[str, path_example("clap")],
                         request: Request) -> dict[str, Any]:
    """One loaded model: `clap`, `emotion2vec` or `chattts`, or any name a route takes
    for one (`tts-1`; a checkpoint such as `laion/clap-htsat-unfused`), answered under
    the name asked for (`kind` says which model it is), as OpenAI answers its aliases."""
    pipelines: dict[str, Pipeline] = request.app.state.pipelines
    kind = _kind_named(model_id, pipelines)
    if kind is None:
        loaded = ", ".join(sorted(pipelines)) or "none"
        raise NotFound(f"model {model_id[:80]!r} is not loaded here (loaded: {loaded})")
    return {**await _card(request, kind, pipelines[kind]), "id": model_id}
