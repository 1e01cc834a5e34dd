"""`POST /tts`: text in, audio bytes out (ChatTTS through the continuous-batching engine).

A client that disconnects while its request is generating frees its engine slot at the
next step: Starlette does not cancel a handler whose client went away, so the handler
watches for the disconnect and cancels the synthesis, which aborts the engine sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.audio_encode import MEDIA_TYPES, AudioFormat
from service.deps import get_pipeline, get_settings
from service.errors import InvalidInput
from service.pipelines.chattts import ChatTTSPipeline, SpeechRequest, SpeechResult

router = APIRouter(tags=["tts"])

T = TypeVar("T")
DISCONNECT_POLL_S = 0.1
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, logs do


class Disconnectable(Protocol):
    async def is_disconnected(self) -> bool: ...


class ClientGone(Exception):
    """The client disconnected; its work was cancelled."""


async def cancel_on_disconnect(request: Disconnectable, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it as soon as the client disconnects (polled)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not task.done():
            if await request.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()

FORMATS = (AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.MP3, AudioFormat.OPUS,
           AudioFormat.PCM)


class TTSBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """Speaker seed: a deterministic random speaker, as upstream samples it."""
    spk_emb: str | None = None
    """An upstream-format speaker string (base16384 of LZMA2 float16[768])."""
    sampling_seed: int | None = Field(None, ge=0, le=2**63 - 1)
    """Seed of the token sampler; default: the speaker seed, else random (see headers)."""
    temperature: float | None = Field(None, gt=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    max_new_tokens: int | None = Field(None, ge=1)
    refine_text: bool = False
    format: str = "wav"
    sample_rate: int = Field(24000, ge=8000, le=48000)


def _validate(body: TTSBody, max_chars: int) -> None:
    text = body.text.strip()
    if not text:
        raise InvalidInput("text is empty; send some text to speak")
    if len(body.text) > max_chars:
        raise InvalidInput(
            f"text has {len(body.text)} characters; the limit is {max_chars} "
            "(AUDIOSERVE_TTS_MAX_TEXT_CHARS)"
        )
    if body.format.lower() not in FORMATS:
        raise InvalidInput(
            f"format {body.format!r} is not supported; use one of {', '.join(FORMATS)}"
        )
    if body.seed is not None and body.spk_emb is not None:
        raise InvalidInput("send either `seed` or `spk_emb`, not both")


def _headers(result: SpeechResult, demo: bool) -> dict[str, str]:
    timings = ";".join(f"{k}={v:.1f}" for k, v in result.timings_ms.items())
    headers = {
        "X-Audioserve-Duration-S": f"{result.duration_s:.3f}",
        "X-Audioserve-Tokens": str(result.tokens),
        "X-Audioserve-Finish-Reason": result.finish_reason,
        "X-Audioserve-Sample-Rate": str(result.sample_rate),
        "X-Audioserve-Sampling-Seed": str(result.sampling_seed),
        "X-Audioserve-Timings-Ms": timings,
        "Server-Timing": ", ".join(
            f"{k};dur={v:.1f}" for k, v in result.timings_ms.items()
        ),
    }
    if demo:
        headers["X-Audioserve-Demo"] = "true"
    return headers


@router.post("/tts", response_class=Response)
async def tts(body: TTSBody, request: Request) -> Response:
    settings = get_settings(request)
    _validate(body, settings.tts_max_text_chars)
    pipeline: ChatTTSPipeline = get_pipeline(request, "chattts")
    speech = SpeechRequest(
        text=body.text, seed=body.seed, spk_emb=body.spk_emb, sampling_seed=body.sampling_seed,
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        max_new_tokens=body.max_new_tokens, refine_text=body.refine_text,
        format=body.format.lower(), sample_rate=body.sample_rate,
    )
    try:
        result = await cancel_on_disconnect(request, pipeline.synthesize(speech))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return Response(
        content=result.audio, media_type=MEDIA_TYPES[body.format.lower()],
        headers=_headers(result, pipeline.pack.manifest.demo),
    )
