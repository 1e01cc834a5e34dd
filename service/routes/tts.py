"""`POST /tts`: text in, audio bytes out (ChatTTS through the continuous-batching engine).

With `stream: true` the audio is sent as it is generated. Clients that disconnect or stop
reading are handled in service/routes/streaming.py: either way the engine sequences are
aborted and their slots freed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.audio.encode import MEDIA_TYPES, AudioFormat
from service.errors import CLIENT_CLOSED, InvalidInput, PayloadTooLarge
from service.pipelines.chattts import (
    MAX_SAMPLING_SEED,
    ChatTTSPipeline,
    SpeechRequest,
    SpeechResult,
    token_bounds_problem,
)
from service.pipelines.chattts_stream import SpeechStream, open_stream
from service.routes.deps import get_metrics, get_pipeline, get_settings
from service.routes.field_rules import NON_EMPTY, NOT_BLANK
from service.routes.json_body import JsonBodyRoute
from service.routes.responses import TTS_ERRORS
from service.routes.streaming import (
    AudioStreamResponse,
    ClientGone,
    cancel_on_disconnect,
    stream_audio,
)
from service.tts.chunking import Split
from service.tts.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from service.tts.stretch import MAX_SPEED, MIN_SPEED

router = APIRouter(tags=["tts"], route_class=JsonBodyRoute)


SENTENCES_FIELD = "X-Audioserve-Sentences"
TRUNCATED_FIELD = "X-Audioserve-Truncated-At-S"


def sentences_field(spans: Sequence[tuple[int, int]], rate: int, max_bytes: int) -> str:
    """Each piece's [start, end) in the joined audio, in samples at `rate` (the pack's,
    24000), as `rate=24000; spans=0-52800,52560-100080` (neighbours overlap by the
    crossfade); over `max_bytes` (AUDIOSERVE_TTS_SPANS_FIELD_MAX_BYTES), only how many
    were left out: `rate=24000; omitted=700` (docs/speech-stream.md)."""
    value = f"rate={rate}; spans=" + ",".join(f"{a}-{b}" for a, b in spans)
    return value if len(value) <= max_bytes else f"rate={rate}; omitted={len(spans)}"


def streaming_response(request: Request, stream: SpeechStream, headers: dict[str, str],
                       content: AsyncIterator[bytes] | None = None,
                       media_type: str | None = None) -> AudioStreamResponse:
    """The stream's audio (or `content` made from it), cut off if the client stalls;
    audio ends with the pieces' spans as a trailer where the server offers trailers."""
    rejections = get_metrics(request).rejections
    settings = get_settings(request)
    rate = stream.pipeline.c.sample_rate
    trailers = None if content is not None else {
        SENTENCES_FIELD: lambda: sentences_field(stream.spans, rate,
                                                 settings.tts_spans_field_max_bytes),
        # a stream cannot know up front: the cap in seconds if it was reached, else "no"
        TRUNCATED_FIELD: lambda: (f"{stream.truncated_at_s:g}"
                                  if stream.truncated_at_s is not None else "no")}
    return AudioStreamResponse(
        content if content is not None else stream_audio(request, stream),
        stall_timeout_s=settings.tts_stream_stall_timeout_s,
        media_type=media_type or stream.media_type, headers=headers,
        on_stall=lambda: rejections.labels("chattts_stream", "stalled_reader").inc(),
        on_close=stream.abort, trailers=trailers)


async def start_stream(request: Request, pipeline: ChatTTSPipeline,
                       speech: SpeechRequest, path: str = "http") -> SpeechStream | None:
    """`open_stream`, given up (None) if the client leaves while it waits for a slot."""
    try:
        return await cancel_on_disconnect(request, open_stream(pipeline, speech, path))
    except ClientGone:
        return None


FORMATS = (AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.MP3, AudioFormat.OPUS,
           AudioFormat.AAC, AudioFormat.PCM)


SPEAKER_FIELDS = ("seed", "spk_emb", "voice")
"""Ways to name the speaker: a request gives at most one of them (`_validate`)."""


def _at_most_one_speaker(schema: dict[str, Any]) -> None:
    """The schema says what `_validate` enforces: no two speaker fields both given."""
    given = {"not": {"type": "null"}}
    schema["examples"] = [{"text": "Hello from audioserve.", "voice": "alloy", "format": "wav"}]
    schema["not"] = {"anyOf": [{"required": [a, b], "properties": {a: given, b: given}}
                               for i, a in enumerate(SPEAKER_FIELDS)
                               for b in SPEAKER_FIELDS[i + 1:]]}


class TTSBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_at_most_one_speaker)

    text: str = Field(json_schema_extra=NOT_BLANK)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """Speaker seed: a deterministic random speaker, as upstream samples it."""
    spk_emb: str | None = Field(None, json_schema_extra=NON_EMPTY)
    """An upstream-format speaker string (base16384 of LZMA2 float16[768])."""
    sampling_seed: int | None = Field(None, ge=0, le=MAX_SAMPLING_SEED)
    """Seed of the token sampler; default: the speaker seed, else random (see headers)."""
    temperature: float | None = Field(None, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int | None = Field(None, ge=0)
    """Upstream's `min_new_token`: no end of speech before this many tokens (per piece)."""
    refine_text: bool = False
    format: str = Field("wav", json_schema_extra={"enum": [str(f) for f in FORMATS]})
    """The answer's audio format (case-insensitive: `WAV` is taken too)."""
    sample_rate: int = Field(24000, ge=8000, le=48000)
    voice: str | None = Field(None, json_schema_extra=NON_EMPTY)
    """A saved or default voice name, a mix `a(2)+b(1)`, or an `spk_emb` string."""
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream: bool = False
    """Send the audio as it is generated (chunked; WAV with 0xFFFFFFFF sizes)."""
    split: Split = "long"
    """`sentence` / `clause`: every sentence / clause is its own piece, as WS
    /v1/audio/speech/stream speaks text that arrives in fragments (same text, seed and
    split: the same audio)."""

    @model_validator(mode="after")
    def _token_bounds(self) -> TTSBody:
        if (problem := token_bounds_problem(self.min_new_tokens, self.max_new_tokens)):
            raise ValueError(problem)
        return self


def check_text(text: str, max_chars: int, field: str = "text") -> None:
    """Empty -> 422. Over the limit -> 413: the request is valid, only larger than this
    server is configured to take (the same class as an upload over its byte limit)."""
    if len(text) > max_chars:  # first: O(1), before anything looks at the text
        raise PayloadTooLarge(
            f"{field} has {len(text)} characters; the limit is {max_chars} "
            "(AUDIOSERVE_TTS_MAX_TEXT_CHARS); split it over several requests"
        )
    if not text.strip():
        raise InvalidInput(f"{field} is empty; send some text to speak")


def _validate(body: TTSBody, max_chars: int) -> None:
    check_text(body.text, max_chars)
    if body.format.lower() not in FORMATS:
        raise InvalidInput(
            f"format {body.format!r} is not supported; use one of {', '.join(FORMATS)}"
        )
    if sum(getattr(body, name) is not None for name in SPEAKER_FIELDS) > 1:
        raise InvalidInput("send one of `seed`, `spk_emb` or `voice`, not several")


def attachment(fmt: str) -> dict[str, str]:
    """`Content-Disposition` with a file name: a browser (Swagger UI's "Download file")
    can save the answer under a name whose extension says what it is."""
    return {"Content-Disposition": f'attachment; filename="speech.{fmt}"'}


def audio_responses(formats: tuple[str, ...], streamed: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI of a 200 that is audio: every media type it may carry, its headers."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {MEDIA_TYPES[f]: binary for f in dict.fromkeys(formats)}
    return {200: {"description": f"The audio file (`Content-Disposition` names it). {streamed}",
                  "content": content, "headers": _AUDIO_HEADERS}}


_AUDIO_HEADERS = {
    "Content-Disposition": {"description": "attachment; filename=\"speech.<format>\"",
                            "schema": {"type": "string"}},
    "X-Audioserve-Sampling-Seed": {"description": "The sampler's seed: send it back as the "
                                   "seed to get the same audio.", "schema": {"type": "string"}},
    "X-Audioserve-Sample-Rate": {"description": "The audio's sample rate (Hz).",
                                 "schema": {"type": "string"}},
    "X-Audioserve-Pieces": {"description": "How many pieces the text was cut into (one "
                            "engine sequence each).", "schema": {"type": "string"}},
    SENTENCES_FIELD: {
        "description": "Where each piece lies in the audio: `rate=24000; spans=0-52800,"
        "52560-100080` ([start, end) in samples at `rate`, the model's rate, whatever "
        "the answer's; neighbours overlap by the crossfade), or `rate=24000; omitted=N` "
        "when longer than AUDIOSERVE_TTS_SPANS_FIELD_MAX_BYTES. A whole answer has it as "
        "a header; a streamed one (chunked, HTTP/1.1) as a trailer, declared by "
        "`Trailer: X-Audioserve-Sentences` (docs/speech-stream.md).",
        "schema": {"type": "string", "pattern": r"^rate=\d+; (spans=(\d+-\d+(,\d+-\d+)*)?"
                   r"|omitted=\d+)$"}},
    TRUNCATED_FIELD: {
        "description": "The answer reached AUDIOSERVE_TTS_MAX_OUTPUT_S (this many seconds "
        "of audio): its audio stops there and the text after it was not spoken. A whole "
        "answer has it as a header only then; a streamed one always as a trailer: the cap, "
        "or `no`.", "schema": {"type": "string", "pattern": r"^(\d+(\.\d+)?(e[+-]?\d+)?|no)$"}},
    "Trailer": {"description": "Streamed answers: `X-Audioserve-Sentences, "
                "X-Audioserve-Truncated-At-S`, sent as trailers after the last chunk.",
                "schema": {"type": "string"}},
}


def response_headers(result: SpeechResult, pipeline: ChatTTSPipeline) -> dict[str, str]:
    """A whole answer's headers: what it took, and where each piece lies in it."""
    timings = ";".join(f"{k}={v:.1f}" for k, v in result.timings_ms.items())
    headers = {
        SENTENCES_FIELD: sentences_field(result.spans, pipeline.c.sample_rate,
                                         pipeline.settings.tts_spans_field_max_bytes),
        "X-Audioserve-Duration-S": f"{result.duration_s:.3f}",
        "X-Audioserve-Tokens": str(result.tokens),
        "X-Audioserve-Finish-Reason": result.finish_reason,
        "X-Audioserve-Sample-Rate": str(result.sample_rate),
        "X-Audioserve-Sampling-Seed": str(result.sampling_seed),
        "X-Audioserve-Timings-Ms": timings,
        "X-Audioserve-Pieces": str(result.pieces),
        "Server-Timing": ", ".join(
            f"{k};dur={v:.1f}" for k, v in result.timings_ms.items()
        ),
    }
    if result.truncated_at_s is not None:  # never silently: AUDIOSERVE_TTS_MAX_OUTPUT_S
        headers[TRUNCATED_FIELD] = f"{result.truncated_at_s:g}"
    if pipeline.pack.manifest.demo:
        headers["X-Audioserve-Demo"] = "true"
    return headers


def stream_headers(pipeline: ChatTTSPipeline, stream: SpeechStream) -> dict[str, str]:
    headers = {
        **attachment(stream.req.format),
        "X-Audioserve-Sample-Rate": str(stream.req.sample_rate),
        "X-Audioserve-Sampling-Seed": str(stream.prepared.sampling_seed),
        "X-Audioserve-Pieces": str(stream.pieces),
        "X-Audioserve-Stream-Chunk-Tokens": str(pipeline.settings.tts_stream_chunk_tokens),
        "Cache-Control": "no-store",
        "X-Audioserve-Max-Output-S": f"{pipeline.settings.tts_max_output_s:g}",
    }
    if not stream.encoder.states_length:  # docs/tts-limits.md: what readers then do
        headers["X-Audioserve-Length-In-File"] = "false"
    if pipeline.pack.manifest.demo:
        headers["X-Audioserve-Demo"] = "true"
    return headers


@router.post("/tts", response_class=Response,
             responses={**audio_responses(FORMATS, "With `stream: true` it is sent as it is "
                                          "generated (chunked)."), **TTS_ERRORS})
async def tts(body: TTSBody, request: Request) -> Response:
    settings = get_settings(request)
    _validate(body, settings.tts_max_text_chars)
    pipeline: ChatTTSPipeline = get_pipeline(request, "chattts")
    speech = SpeechRequest(
        text=body.text, seed=body.seed, spk_emb=body.spk_emb, sampling_seed=body.sampling_seed,
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        max_new_tokens=body.max_new_tokens, min_new_tokens=body.min_new_tokens,
        refine_text=body.refine_text,
        format=body.format.lower(), sample_rate=body.sample_rate, voice=body.voice,
        speed=body.speed, split=body.split,
    )
    if body.stream:
        stream = await start_stream(request, pipeline, speech)
        if stream is None:
            return Response(status_code=CLIENT_CLOSED)
        try:
            return streaming_response(request, stream, stream_headers(pipeline, stream))
        except BaseException:
            stream.abort()
            raise
    try:
        result = await cancel_on_disconnect(request, pipeline.synthesize(speech))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return Response(
        content=result.audio, media_type=MEDIA_TYPES[body.format.lower()],
        headers={**response_headers(result, pipeline),
                 **attachment(body.format.lower())},
    )
