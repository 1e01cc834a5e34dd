"""Response models of the JSON routes, and how a route's answer is built and sent.

The models are the OpenAPI schema of every answer (and of the error body with each of
its statuses), and they check every answer before it goes out: a number must be finite
(`FiniteFloat`), so a NaN can never leave as `null`. `model_response` builds the body,
validates and serialises it, in the CPU pool when it is large: a 300 s frame timeline is
135,000 numbers, work that grows with the request and must not run on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import NonFiniteResult
from service.runtime.admission import CpuWorkers

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Answer(BaseModel):
    """Fields the server adds later stay (extra allowed); unset optional fields are left out."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: invalid_input, "
                                  "payload_too_large, overloaded, timeout, ...")
    message: str = Field(description="What was wrong and what is allowed.")
    request_id: str | None = Field(None, description="Also in the X-Request-ID header.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What was wrong and what is allowed.")
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error.")
    param: str | None = Field(description="The request field at fault, when one is.")
    code: str | None = Field(description="Stable, machine-readable, as in ErrorBody.")


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape, which the /v1/audio/* and /v1/embeddings routes answer."""

    error: OpenAIErrorDetail


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description, **extra}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed: not JSON, not multipart, not base64."),
    401: _error("Missing or wrong API key (`Authorization: Bearer <key>`)."),
    403: _error("A browser page of an origin not allowed (`AUDIOSERVE_LIVE_ALLOWED_ORIGINS`) "
                "sent a method other than GET, HEAD or OPTIONS."),
    404: _error("No such thing here (a model, a saved voice)."),
    408: _error("The request body paused or took too long (the read limits)."),
    409: _error("Conflicts with what is stored: the name is taken, or the store is full."),
    413: _error("Over a size limit: body bytes, audio seconds, text length."),
    415: _error("Not audio this service decodes, or not a content type it takes."),
    422: _error("Well-formed but unusable: bad fields, too short, silent, non-finite."),
    503: _error("Overloaded or not loaded; retry after the header's seconds.",
                headers=_RETRY_AFTER),
    504: _error("The request could not start within its deadline."),
    500: _error("An internal error (logged with the request id); not the client's fault."),
}
"""Every error an API route may answer, for the OpenAPI `responses` of each route."""


def path_example(value: str, schema: dict[str, Any] | None = None) -> Any:
    """A path parameter's example, which Swagger UI's "Try it out" fills in, and what its
    schema says beyond `string` (service.routes.field_rules)."""
    return Path(openapi_examples={"example": {"value": value}}, json_schema_extra=schema)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: ERRORS[status] for status in statuses}


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`errors`, in OpenAI's error shape."""
    return {status: {**ERRORS[status], "model": OpenAIErrorBody} for status in statuses}


UPLOAD_ERRORS = errors(400, 401, 403, 408, 413, 415, 422, 503, 504)
JSON_ERRORS = errors(400, 401, 403, 408, 413, 415, 422, 503, 504)
TTS_ERRORS = JSON_ERRORS
OPENAI_TTS_ERRORS = openai_errors(400, 401, 403, 408, 413, 415, 422, 503, 504)
OPENAI_EMBEDDING_ERRORS = openai_errors(400, 401, 403, 408, 413, 415, 422, 503, 504)


class ModelAnswer(Answer):
    model: str = Field(description="Which model answered: clap, emotion2vec, chattts.")
    source: str = Field(description="The checkpoint the pack was exported from.")
    demo: bool = Field(description="True for random-weight demo packs: outputs mean nothing.")
    precision: str
    provider: str = Field(description="cuda or cpu.")
    warning: str | None = None


class AudioFields(BaseModel):
    duration_s: FiniteFloat
    truncated: bool = Field(description="Longer audio was cut to the limit (and says so).")
    original_duration_s: FiniteFloat | None
    windows_total: int
    windows_used: int
    windows_silent: int


class LabelScore(BaseModel):
    label: str
    probability: FiniteFloat
    similarity: FiniteFloat = Field(description="Cosine of audio and prompt embeddings.")


class WindowScores(BaseModel):
    index: int
    start_s: FiniteFloat
    end_s: FiniteFloat
    silent: bool
    used: bool
    labels: list[LabelScore]


class ClassifyAnswer(ModelAnswer, AudioFields):
    object: str = "classification"
    labels: list[LabelScore] = Field(description="Ranked, most probable first.")
    prompt_template: str
    per_window: list[WindowScores] | None = Field(
        None, description="With per_window: each 10 s window's ranking (a timeline).")
    timings_ms: dict[str, FiniteFloat]


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[FiniteFloat]


class EmbedAudioAnswer(ModelAnswer, AudioFields):
    object: str = "list"
    data: list[Embedding]
    timings_ms: dict[str, FiniteFloat]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbedTextAnswer(ModelAnswer):
    object: str = "list"
    data: list[Embedding]
    usage: Usage


class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[FiniteFloat] | str = Field(
        description="Floats, or with `encoding_format: base64` little-endian float32 "
                    "bytes in base64.")
    duration_s: FiniteFloat | None = Field(None, description="Audio inputs: the clip's length.")
    truncated: bool | None = Field(None, description="Audio inputs: cut to the limit.")


class OpenAIEmbeddingsAnswer(ModelAnswer):
    object: str = "list"
    data: list[OpenAIEmbedding]
    usage: Usage


class ModelCard(Answer):
    """OpenAI's model object; the other fields (kind, precision, provider, batching,
    graphs, endpoints, replicas) describe the loaded pack."""

    id: str
    object: str = "model"
    created: int = Field(description="When this server loaded the model (Unix seconds).")
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """`/readyz`'s body, 200 or 503 (service.pipelines.loader.LoaderStatus)."""

    status: Literal["ready", "starting", "loading", "failed", "stopped"]
    models: list[str] | None = Field(None, description="The models loaded.")
    expected: list[str] | None = Field(
        None, description="The models this server was asked to serve: ready means all.")
    unhealthy: list[str] | None = Field(None, description="Models whose worker died.")
    error: str | None = Field(None, description="Why loading failed.")


OPERATIONS_TAG = "operations"
READINESS_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every model asked for is loaded and warm."},
    503: {"model": Readiness, "description": "Not ready: starting, loading, failed (see "
                                             "`error`), stopping, or a worker died."},
}
METRICS_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus' text format (README: Operations).",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}


class EmotionScore(BaseModel):
    label: str
    zh: str
    emoji: str
    score: FiniteFloat


class Segment(EmotionScore):
    start_s: FiniteFloat
    end_s: FiniteFloat


class Analysed(BaseModel):
    start_s: FiniteFloat
    end_s: FiniteFloat
    trimmed: bool


class Frames(BaseModel):
    frame_rate: FiniteFloat
    labels: list[str]
    times_s: list[FiniteFloat]
    scores: list[list[FiniteFloat]] = Field(description="One row per frame, in `labels` order.")
    segments: list[Segment]
    smoothing: str


class EmotionAnswer(ModelAnswer):
    object: str = "emotion"
    granularity: str
    emotion: EmotionScore = Field(description="The top emotion.")
    scores: list[EmotionScore] = Field(description="All nine, ranked.")
    duration_s: FiniteFloat
    analysed: Analysed
    chunks: int
    merge: str | None = None
    embedding: list[FiniteFloat] | None = None
    frames: Frames | None = None
    timings_ms: dict[str, FiniteFloat]


def render(model: type[BaseModel], build: Callable[..., dict[str, Any]], *args: Any
           ) -> Response:
    """Build, check and serialise an answer (CPU work: called in the pool)."""
    try:
        answer = model.model_validate(build(*args))
    except ValidationError as exc:
        if any(err["type"] == "finite_number" for err in exc.errors()):
            raise NonFiniteResult(
                "the model's result for this input is not finite (NaN or infinity); the "
                "audio is likely degenerate") from None
        raise
    return Response(answer.model_dump_json(exclude_unset=True), media_type="application/json")


INLINE_NUMBERS = 2048
"""Answers of at most this many numbers are rendered on the event loop (~50 us: less
than the ~80 us of CPU a hop to the pool costs); larger ones in the pool."""


async def model_response(request: Request, model: type[BaseModel], numbers: int,
                         build: Callable[..., dict[str, Any]], *args: Any) -> Response:
    """`render`, in the CPU pool when the answer holds more than INLINE_NUMBERS numbers
    (the caller's count: a frame timeline is 135,000)."""
    if numbers <= INLINE_NUMBERS:
        return render(model, build, *args)
    cpu: CpuWorkers = request.app.state.cpu
    return await cpu.run(render, model, build, *args)
