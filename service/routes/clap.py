"""CLAP routes: zero-shot `POST /classify`, `POST /embed/audio`, `POST /embed/text`.

`/classify` and `/embed/audio` take multipart (`file` + form fields) or JSON with base64
`audio` (service.uploads). Labels come as repeated `labels` fields, one comma-separated
`labels` field, or a JSON list. `/embed/text` takes OpenAI-embeddings-style JSON
`{"input": "text" | ["text", ...]}` and answers in that API's shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from service.deps import admit, get_pipeline, get_settings
from service.errors import InvalidInput
from service.json_body import JsonBodyRoute
from service.pipelines.clap import (
    AudioEmbedding,
    ClapPipeline,
    ClassifyResult,
    LabelScore,
    WindowScores,
)
from service.routes.common import model_fields
from service.uploads import AudioInput, read_audio_input

router = APIRouter(tags=["clap"], route_class=JsonBodyRoute)


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    model: str | None = None
    encoding_format: str = "float"


# -- field parsing --------------------------------------------------------------------

def parse_labels(form: AudioInput) -> list[str]:
    """Repeated fields and JSON lists are taken as they are; one text field is split on
    commas (a JSON string too, but never the items of a JSON list)."""
    values = form.all("labels")
    if any(not isinstance(v, str) for v in values):
        raise InvalidInput("`labels` must be strings (a list, or one comma-separated string)")
    if len(values) == 1 and "labels" not in form.json_lists:
        return values[0].split(",")
    return values


def parse_top_k(form: AudioInput) -> int | None:
    raw = form.first("top_k")
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise InvalidInput(f"top_k must be a positive integer, not {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"top_k must be a positive integer, not {raw!r}") from None
    if isinstance(raw, float) and raw != value:
        raise InvalidInput(f"top_k must be a positive integer, not {raw!r}")
    if value < 1:
        raise InvalidInput(f"top_k must be at least 1, not {value}")
    return value


def parse_template(form: AudioInput) -> str | None:
    raw = form.first("prompt_template")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("prompt_template must be a string containing {label}")
    return raw


# -- responses ------------------------------------------------------------------------

def _model_fields(pipeline: ClapPipeline) -> dict[str, Any]:
    return model_fields(pipeline.info(), "clap", "scores")


def _audio_fields(audio: AudioEmbedding) -> dict[str, Any]:
    return {
        "duration_s": round(audio.duration_s, 4),
        "truncated": audio.truncated,
        "original_duration_s": audio.original_duration_s,
        "windows_total": len(audio.spans),
        "windows_used": audio.windows_used,
        "windows_silent": sum(1 for s in audio.spans if s.silent),
    }


def _label(score: LabelScore) -> dict[str, Any]:
    return {"label": score.label, "probability": score.probability,
            "similarity": score.similarity}


def _window(w: WindowScores) -> dict[str, Any]:
    return {"index": w.index, "start_s": round(w.start_s, 4), "end_s": round(w.end_s, 4),
            "silent": w.silent, "used": w.used, "labels": [_label(s) for s in w.labels]}


def classify_body(pipeline: ClapPipeline, result: ClassifyResult) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "classification", **_model_fields(pipeline)}
    body["labels"] = [_label(s) for s in result.labels]
    body["prompt_template"] = result.prompt_template
    body.update(_audio_fields(result.audio))
    if result.per_window is not None:
        body["per_window"] = [_window(w) for w in result.per_window]
    body["timings_ms"] = result.timings_ms
    return body


# -- routes ---------------------------------------------------------------------------

@router.post("/classify")
async def classify(request: Request) -> dict[str, Any]:
    """Zero-shot classification of an audio upload against free-text labels."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    async with admit(request, "clap"):
        form = await read_audio_input(request, get_settings(request))
        result = await pipeline.classify(
            form.data, parse_labels(form), prompt_template=parse_template(form),
            top_k=parse_top_k(form), per_window=form.flag("per_window"),
        )
    return classify_body(pipeline, result)


@router.post("/embed/audio")
async def embed_audio(request: Request) -> dict[str, Any]:
    """The clip's L2-normalised CLAP embedding (mean over its 10 s windows)."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    async with admit(request, "clap"):
        form = await read_audio_input(request, get_settings(request))
        audio = await pipeline.embed_audio(form.data)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": audio.embedding.tolist()}],
        **_model_fields(pipeline),
        **_audio_fields(audio),
        "timings_ms": audio.timings_ms,
    }


@router.post("/embed/text")
async def embed_text(request: Request, body: EmbedTextRequest) -> dict[str, Any]:
    """L2-normalised CLAP text embeddings, in the OpenAI embeddings response shape."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    settings = get_settings(request)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if body.encoding_format != "float":
        raise InvalidInput("encoding_format: only 'float' is supported")
    if not texts:
        raise InvalidInput("`input` is empty: send a string or a list of strings")
    if len(texts) > settings.max_labels:
        raise InvalidInput(f"{len(texts)} inputs; the limit is {settings.max_labels}")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"input {i} is empty")
        if len(text) > settings.max_label_chars:
            raise InvalidInput(f"input {i} has {len(text)} characters; the limit is "
                               f"{settings.max_label_chars} (AUDIOSERVE_MAX_LABEL_CHARS)")
    async with admit(request, "clap"):
        embeddings = await pipeline.embed_text(texts)
    tokens = sum(len(ids) for ids in pipeline.tokenizer.encode(texts))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row.tolist()}
                 for i, row in enumerate(embeddings)],
        **_model_fields(pipeline),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
