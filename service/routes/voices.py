"""Named voices: `GET /v1/voices` lists them, `POST /v1/voices` saves one,
`DELETE /v1/voices/<name>` removes one (also at `/voices`). Storage, naming rules and caps
live in service/tts/voices.py; its file I/O and mixing run in the shared CPU pool."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from service.pipelines.chattts import ChatTTSPipeline
from service.routes.deps import get_pipeline
from service.routes.field_rules import NON_EMPTY, VOICE_NAME
from service.routes.json_body import JsonBodyRoute
from service.routes.responses import errors, path_example
from service.tts.voices import VoiceStore

router = APIRouter(tags=["voices"], route_class=JsonBodyRoute)


class VoiceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "narrator", "seed": 1234, "overwrite": True}]})

    name: str = Field(json_schema_extra=VOICE_NAME)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    spk_emb: str | None = Field(None, json_schema_extra=NON_EMPTY)
    mix: str | None = Field(None, json_schema_extra=NON_EMPTY)
    """A weighted mix of known voices, `alice(2)+bob(1)`, stored as its embedding."""
    overwrite: bool = False


def pipeline_of(request: Request) -> ChatTTSPipeline:
    pipeline: ChatTTSPipeline = get_pipeline(request, "chattts")
    return pipeline


@router.get("/v1/voices", responses=errors(401, 503))
@router.get("/voices", include_in_schema=False)
async def list_voices(request: Request) -> dict[str, Any]:
    """Built-in voices, then saved ones by name (bounded by the store's caps; `truncated`
    says when more files exist than a listing reads)."""
    pipeline = pipeline_of(request)
    listing = await pipeline.ctx.cpu.run(pipeline.voices.listing)
    return {"object": "list", "data": [v.public() for v in listing.voices],
            "voices": [v.name for v in listing.voices], "truncated": listing.truncated}


@router.post("/v1/voices", status_code=201,
             responses=errors(400, 401, 403, 409, 413, 415, 422, 503))
@router.post("/voices", status_code=201, include_in_schema=False)
async def save_voice(body: VoiceBody, request: Request) -> JSONResponse:
    pipeline = pipeline_of(request)
    store: VoiceStore = pipeline.voices
    voice = await pipeline.ctx.cpu.run(functools.partial(
        store.save, body.name, seed=body.seed, spk_emb=body.spk_emb, mix=body.mix,
        overwrite=body.overwrite))
    return JSONResponse({**voice.public(), "spk_emb": voice.spk_emb}, status_code=201)


@router.delete("/v1/voices/{name}", status_code=204,
                responses=errors(401, 403, 404, 409, 422, 503))
@router.delete("/voices/{name}", status_code=204, include_in_schema=False)
async def delete_voice(name: Annotated[str, path_example("narrator", VOICE_NAME)],
                       request: Request) -> Response:
    pipeline = pipeline_of(request)
    await pipeline.ctx.cpu.run(pipeline.voices.delete, name)
    return Response(status_code=204)
