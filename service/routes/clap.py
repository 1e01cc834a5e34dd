"""CLAP routes: zero-shot `POST /classify`, `POST /embed/audio`, `POST /embed/text`.

`/classify` and `/embed/audio` take multipart (`file` + form fields) or JSON with base64
`audio` (service.routes.uploads). Labels come as repeated `labels` fields, one comma-separated
`labels` field, or a JSON list. `/embed/text` takes OpenAI-embeddings-style JSON
`{"input": "text" | ["text", ...]}` and answers in that API's shape.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.errors import InvalidInput
from service.pipelines.clap import (
    AudioEmbedding,
    ClapPipeline,
    ClassifyResult,
    LabelScore,
    WindowScores,
)
from service.pipelines.clap_text import validate_labels, validate_template
from service.routes.common import model_fields
from service.routes.deps import admit, check_admission, get_pipeline, get_settings
from service.routes.field_rules import NotBlank, TextList
from service.routes.json_body import JsonBodyRoute
from service.routes.params import (
    UploadParams,
    parse_flag,
    parse_positive_int,
    refuse,
    settings_of,
)
from service.routes.responses import (
    JSON_ERRORS,
    UPLOAD_ERRORS,
    ClassifyAnswer,
    EmbedAudioAnswer,
    EmbedTextAnswer,
    model_response,
)
from service.routes.upload_schema import upload_body
from service.routes.uploads import read_upload
from service.settings import Settings

router = APIRouter(tags=["clap"], route_class=JsonBodyRoute)


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: NotBlank | TextList
    model: str | None = None
    encoding_format: str = Field("float", json_schema_extra={"enum": ["float"]})


# -- fields ---------------------------------------------------------------------------

class ClassifyParams(UploadParams):
    """The fields of `/classify` besides the audio."""

    labels: TextList = Field(
        description="Candidate labels: repeated form fields, one comma-separated field, "
                    "or a JSON list (whose items are never split).",
        examples=[["dog barking", "rain", "car horn"]])
    prompt_template: str | None = Field(
        None, json_schema_extra={"pattern": r"\{label\}"},
        description="Prompt for each label, holding `{label}` exactly once; "
                    "default: the pack's ('This is a sound of {label}.').",
        examples=["This is a sound of {label}."])
    top_k: int | None = Field(None, ge=1, description="Return the k best labels only.")
    per_window: bool = Field(False, description="Also score every 10 s window (timeline).")

    upload_example: ClassVar[dict[str, Any]] = {"labels": ["dog barking", "rain", "car horn"]}
    comma_lists: ClassVar[tuple[str, ...]] = ("labels",)

    @model_validator(mode="before")
    @classmethod
    def _labels_sent(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("labels") in (None, [], ""):
            raise refuse("no labels: send at least one label (`labels`)")
        return data

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, raw: Any) -> list[str]:
        """A JSON list or repeated fields as they are; one text field split on commas."""
        values = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(values, list) or any(not isinstance(v, str) for v in values):
            raise refuse("`labels` must be strings (a list, or one comma-separated string)")
        return values

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str], info: ValidationInfo) -> list[str]:
        return validate_labels(labels, settings_of(info))

    @field_validator("prompt_template", mode="before")
    @classmethod
    def _template(cls, raw: Any, info: ValidationInfo) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise refuse("prompt_template must be a string holding {label}")
        return validate_template(raw, settings_of(info).max_template_chars)

    @field_validator("top_k", mode="before")
    @classmethod
    def _top_k(cls, raw: Any) -> int | None:
        return parse_positive_int("top_k", raw)

    @field_validator("per_window", mode="before")
    @classmethod
    def _per_window(cls, raw: Any) -> bool:
        return parse_flag("per_window", raw)


class EmbedAudioParams(UploadParams):
    """`/embed/audio` takes the audio alone."""


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


def embed_audio_body(pipeline: ClapPipeline, audio: AudioEmbedding) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": audio.embedding.tolist()}],
        **_model_fields(pipeline),
        **_audio_fields(audio),
        "timings_ms": audio.timings_ms,
    }


def embed_text_body(pipeline: ClapPipeline, embeddings: np.ndarray, tokens: int
                    ) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row.tolist()}
                 for i, row in enumerate(embeddings)],
        **_model_fields(pipeline),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- routes ---------------------------------------------------------------------------

@router.post("/classify", openapi_extra=upload_body(ClassifyParams),
             responses={200: {"model": ClassifyAnswer}, **UPLOAD_ERRORS})
async def classify(request: Request) -> Response:
    """Zero-shot classification of an audio upload against free-text labels."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    check_admission(request, "clap")
    form, params = await read_upload(request, get_settings(request), ClassifyParams)
    async with admit(request, "clap"):
        result = await pipeline.classify(
            form.data, params.labels, prompt_template=params.prompt_template,
            top_k=params.top_k, per_window=params.per_window,
        )
    windows = len(result.per_window) if result.per_window is not None else 0
    numbers = 2 * len(result.labels) * (1 + windows)
    return await model_response(request, ClassifyAnswer, numbers, classify_body, pipeline,
                                result)


@router.post("/embed/audio", openapi_extra=upload_body(EmbedAudioParams),
             responses={200: {"model": EmbedAudioAnswer}, **UPLOAD_ERRORS})
async def embed_audio(request: Request) -> Response:
    """The clip's L2-normalised CLAP embedding (mean over its 10 s windows)."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    check_admission(request, "clap")
    form, _ = await read_upload(request, get_settings(request), EmbedAudioParams)
    async with admit(request, "clap"):
        audio = await pipeline.embed_audio(form.data)
    return await model_response(request, EmbedAudioAnswer, audio.embedding.size,
                                embed_audio_body, pipeline, audio)


@router.post("/embed/text", responses={200: {"model": EmbedTextAnswer}, **JSON_ERRORS})
async def embed_text(request: Request, body: EmbedTextRequest) -> Response:
    """L2-normalised CLAP text embeddings, in the OpenAI embeddings response shape."""
    pipeline: ClapPipeline = get_pipeline(request, "clap")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if body.encoding_format != "float":
        raise InvalidInput("encoding_format: only 'float' is supported here; "
                           "POST /v1/embeddings also takes 'base64'")
    embeddings, tokens = await embed_texts(request, pipeline, texts)
    return await model_response(request, EmbedTextAnswer, embeddings.size, embed_text_body,
                                pipeline, embeddings, tokens)


def check_texts(texts: list[str], settings: Settings) -> None:
    """The caps of a text-embedding request (`AUDIOSERVE_MAX_LABELS`, `..._LABEL_CHARS`)."""
    if not texts:
        raise InvalidInput("`input` is empty: send a string or a list of strings")
    if len(texts) > settings.max_labels:
        raise InvalidInput(f"{len(texts)} inputs; the limit is {settings.max_labels} "
                           "(AUDIOSERVE_MAX_LABELS)")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"input {i} is empty")
        if len(text) > settings.max_label_chars:
            raise InvalidInput(f"input {i} has {len(text)} characters; the limit is "
                               f"{settings.max_label_chars} (AUDIOSERVE_MAX_LABEL_CHARS)")


async def embed_texts(request: Request, pipeline: ClapPipeline, texts: list[str]
                      ) -> tuple[np.ndarray, int]:
    """Checked, admitted, embedded: [N, D] float32 and the prompt tokens they took."""
    check_texts(texts, get_settings(request))
    async with admit(request, "clap"):
        embeddings, tokens = await asyncio.gather(pipeline.embed_text(texts),
                                                  pipeline.count_tokens(texts))
    return embeddings, tokens
