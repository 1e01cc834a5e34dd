"""Named voices: `GET /v1/voices` lists them, `POST /v1/voices` saves one (also at
`/voices`). Storage and naming rules live in service/tts/voices.py."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.deps import get_pipeline
from service.json_body import JsonBodyRoute
from service.pipelines.chattts import ChatTTSPipeline
from service.tts.voices import VoiceStore

router = APIRouter(tags=["voices"], route_class=JsonBodyRoute)


class VoiceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    spk_emb: str | None = None
    mix: str | None = None
    """A weighted mix of known voices, `alice(2)+bob(1)`, stored as its embedding."""
    overwrite: bool = False


def _store(request: Request) -> VoiceStore:
    pipeline: ChatTTSPipeline = get_pipeline(request, "chattts")
    return pipeline.voices


@router.get("/v1/voices")
@router.get("/voices", include_in_schema=False)
async def list_voices(request: Request) -> dict[str, Any]:
    voices = await asyncio.to_thread(_store(request).all)
    return {"object": "list", "data": [v.public() for v in voices],
            "voices": [v.name for v in voices]}


@router.post("/v1/voices", status_code=201)
@router.post("/voices", status_code=201, include_in_schema=False)
async def save_voice(body: VoiceBody, request: Request) -> JSONResponse:
    store = _store(request)
    voice = await asyncio.to_thread(store.save, body.name, seed=body.seed,
                                    spk_emb=body.spk_emb, mix=body.mix,
                                    overwrite=body.overwrite)
    return JSONResponse({**voice.public(), "spk_emb": voice.spk_emb}, status_code=201)
