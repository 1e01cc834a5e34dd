"""OpenAI-compatible `POST /v1/embeddings` on CLAP: text and audio in one joint space,
through every client that speaks OpenAI's embeddings API (the openai SDK, LangChain,
LlamaIndex, vector-database integrations).

- text: OpenAI's body as it is: `input` a string or a list of strings, `encoding_format`
  `float` or `base64` (little-endian float32 bytes, base64: the openai SDK's default),
  `usage.prompt_tokens` counted by CLAP's own tokenizer. Token-id arrays are refused:
  CLAP's vocabulary is not OpenAI's.
- audio (Infinity's convention): `"modality": "audio"` and `input` holding base64 audio
  files or `data:` URLs (`data:audio/wav;base64,...`), any format /embed/audio takes; each
  clip's embedding is /embed/audio's (mean over its 10 s windows, L2-normalised), so it
  compares directly with the text embeddings. Usage counts no tokens for audio.
- `dimensions`: CLAP's embeddings are not trained to be cut short (Matryoshka), so only
  the model's own size is taken; any other is a 422 that says so.

The text and audio work is /embed/text's and /embed/audio's (service/routes/clap.py).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidInput, NonFiniteResult, PayloadTooLarge
from service.pipelines.clap import AudioEmbedding, ClapPipeline
from service.routes.clap import embed_texts
from service.routes.common import model_fields
from service.routes.deps import admit, get_pipeline, get_settings
from service.routes.field_rules import NotBlank, TextList
from service.routes.openai_speech import OpenAIRoute
from service.routes.responses import (
    OPENAI_EMBEDDING_ERRORS,
    OpenAIEmbeddingsAnswer,
    model_response,
)
from service.routes.uploads import decode_base64_audio
from service.settings import MAX_LIST_ITEMS, Settings

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

MODEL_IDS = ("clap",)
"""Besides these, the pack's `source` (its checkpoint id) is accepted as the model."""


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "clap", "input": ["a dog barking", "rain on a window"],
         "encoding_format": "float"}]})

    model: str
    input: (NotBlank | TextList | Annotated[list[int], Field(max_length=MAX_LIST_ITEMS)]
           | Annotated[list[Annotated[list[int], Field(max_length=MAX_LIST_ITEMS)]],
                       Field(max_length=MAX_LIST_ITEMS)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: Literal["text", "audio"] = "text"
    """`audio`: `input` holds base64 audio files or data: URLs (an extension, Infinity's)."""


def _inputs(body: EmbeddingsBody) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not isinstance(item, str) for item in items):
        raise InvalidInput("input: token-id arrays are not taken (CLAP tokenizes text "
                           "itself); send a string or a list of strings")
    return [item for item in items if isinstance(item, str)]


def _check_model(body: EmbeddingsBody, pipeline: ClapPipeline) -> None:
    info = pipeline.info()
    if body.model not in (*MODEL_IDS, info["source"]):
        raise InvalidInput(f"model {body.model[:80]!r} is not served here; use 'clap' (or "
                           f"{info['source']!r})")
    if body.dimensions is not None and body.dimensions != info["embed_dim"]:
        raise InvalidInput(f"dimensions: CLAP's embeddings have {info['embed_dim']} "
                           "dimensions and are not trained to be shortened; omit "
                           f"`dimensions` or send {info['embed_dim']}")


def decode_clips(items: list[str], settings: Settings) -> list[bytes]:
    """Base64 or data: URLs -> file bytes, under the clip count and byte caps (CPU work)."""
    if len(items) > settings.max_embed_audio_inputs:
        raise InvalidInput(f"{len(items)} audio inputs; the limit is "
                           f"{settings.max_embed_audio_inputs} "
                           "(AUDIOSERVE_MAX_EMBED_AUDIO_INPUTS)")
    clips = [decode_base64_audio(item, f"input {i}") for i, item in enumerate(items)]
    total = sum(len(c) for c in clips)
    if total > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the audio inputs hold {total} bytes; the limit is "
                              f"{settings.max_upload_bytes} (AUDIOSERVE_MAX_UPLOAD_BYTES)")
    for i, clip in enumerate(clips):
        if not clip:
            raise InvalidInput(f"input {i} is empty")
    return clips


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    if not np.isfinite(row).all():
        raise NonFiniteResult("the model's result for this input is not finite (NaN or "
                              "infinity); the input is likely degenerate")
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return [float(x) for x in row]


def embeddings_body(pipeline: ClapPipeline, rows: np.ndarray, encoding: str, tokens: int,
                    clips: list[AudioEmbedding] | None) -> dict[str, Any]:
    data = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"object": "embedding", "index": i,
                                "embedding": _encode(row, encoding)}
        if clips is not None:
            item.update(duration_s=round(clips[i].duration_s, 4), truncated=clips[i].truncated)
        data.append(item)
    return {"object": "list", "data": data, **model_fields(pipeline.info(), "clap", "embeddings"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.post("/v1/embeddings",
             responses={200: {"model": OpenAIEmbeddingsAnswer}, **OPENAI_EMBEDDING_ERRORS})
async def embeddings(request: Request, body: EmbeddingsBody) -> Response:
    """CLAP embeddings of text, or of audio with `modality: "audio"`, in one space."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    _check_model(body, pipeline)
    items = _inputs(body)
    clips: list[AudioEmbedding] | None = None
    if body.modality == "text":
        rows, tokens = await embed_texts(request, pipeline, items)
    else:
        if not items:
            raise InvalidInput("`input` is empty: send base64 audio files or data: URLs")
        data = await pipeline.ctx.cpu.run(decode_clips, items, get_settings(request))
        async with admit(request, "clap"):
            clips = list(await asyncio.gather(*(pipeline.embed_audio(d) for d in data)))
        rows, tokens = np.stack([c.embedding for c in clips]), 0
    return await model_response(request, OpenAIEmbeddingsAnswer, rows.size, embeddings_body,
                                pipeline, rows, body.encoding_format, tokens, clips)
