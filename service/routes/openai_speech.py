"""OpenAI-compatible `POST /v1/audio/speech` (what openai's client, Kokoro-FastAPI and
openedai-speech users call), on the same ChatTTS pipeline as `/tts`.

`voice` takes OpenAI's built-in names (each a seeded ChatTTS speaker) and its custom-voice
object `{"id": "<saved voice>"}`; `model` any OpenAI speech model name by rule (a family
and an optional date, `service.tts.model_names`). `stream_format: "sse"` ends with
`speech.audio.done`, whose `usage` counts the prompt's tokens (text and control tokens)
as input and the audio-code tokens as output.
Differences from OpenAI, on purpose: `voice` also takes saved voices by name, mixes
`a(2)+b(1)` and raw `spk_emb` strings; `speed` is met by time-stretching (service/tts/stretch.py);
`instructions` is accepted and ignored (ChatTTS takes no style prompt); `stream` (as
Kokoro-FastAPI) defaults to true, so audio is sent as it is generated, as OpenAI does,
except for FLAC: a streamed FLAC cannot state its length (its STREAMINFO says 0, which
libsndfile reads as "unknown" and then fails on), so FLAC is whole unless `stream: true`
is asked for (docs/tts-limits.md).
Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: the route
class declares it, so every error of the path, from a missing key to an unreadable JSON
body, is answered in that shape.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.audio.encode import MEDIA_TYPES
from service.errors import CLIENT_CLOSED, InvalidInput
from service.pipelines.chattts import MAX_SAMPLING_SEED, ChatTTSPipeline, SpeechRequest
from service.pipelines.chattts_stream import SpeechStream
from service.routes.deps import get_pipeline, get_settings
from service.routes.field_rules import NON_EMPTY, NOT_BLANK
from service.routes.json_body import JsonBodyRoute
from service.routes.responses import OPENAI_TTS_ERRORS
from service.routes.streaming import (
    ClientGone,
    cancel_on_disconnect,
    stream_audio,
)
from service.routes.tts import (
    attachment,
    audio_responses,
    check_text,
    response_headers,
    start_stream,
    stream_headers,
    streaming_response,
)
from service.tts.chunking import Split
from service.tts.model_names import unknown_model
from service.tts.stretch import MAX_SPEED, MIN_SPEED

DEFAULT_VOICE = "alloy"
_PARAMS = ("model", "input", "voice", "response_format", "speed", "stream_format", "stream",
           "instructions", "seed", "split")
_PARAM_AT_START = re.compile(r"^`?(\w+)`?\b")


def openai_error(status: int, code: str, message: str) -> dict[str, Any]:
    match = _PARAM_AT_START.match(message)
    field = match.group(1) if match else None
    # validation messages start "field: ..."; ours start with the parameter's name
    param = field if field in _PARAMS or message.startswith(f"{field}:") else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status in (429, 503) and code == "overloaded":
        kind = "rate_limit_error" if status == 429 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIRoute(JsonBodyRoute):
    """Errors of these routes, from the auth check to body parsing, take OpenAI's shape
    (service.errors finds `error_formatter` by the route's path)."""

    error_formatter = staticmethod(openai_error)


router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


class VoiceRef(BaseModel):
    """OpenAI's custom-voice reference; here the id is a voice's name (POST
    /v1/audio/voices answers it as `id`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(json_schema_extra=NON_EMPTY)


class SpeechBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "tts-1", "input": "Hello from audioserve.", "voice": "alloy",
         "response_format": "mp3"}]})

    model: str
    input: str = Field(json_schema_extra=NOT_BLANK)
    voice: Annotated[str, Field(json_schema_extra=NON_EMPTY)] | VoiceRef = DEFAULT_VOICE
    """A built-in name (OpenAI's), `{"id": "<saved voice>"}`, a saved voice's name, a mix
    `a(2)+b(1)`, or an `spk_emb` string."""
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool | None = None
    """Send audio as it is generated; default: true, except for `flac` (see the note)."""
    instructions: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SAMPLING_SEED)
    """Sampling seed (an extension): the same seed and voice give the same audio."""
    split: Split = "long"
    """Extension: `sentence` / `clause` speaks every sentence / clause as its own piece,
    as the speech WebSocket does (same text, seed and split: the same audio)."""


def _speech_request(body: SpeechBody) -> SpeechRequest:
    if (problem := unknown_model(body.model)) is not None:
        raise InvalidInput(problem)
    voice = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    return SpeechRequest(text=body.input, voice=voice, speed=body.speed,
                         sampling_seed=body.seed, format=body.response_format,
                         split=body.split)


async def _sse(request: Request, stream: SpeechStream) -> AsyncIterator[bytes]:
    """OpenAI's `stream_format: "sse"` events: audio deltas (base64), then done."""
    async with contextlib.aclosing(stream_audio(request, stream)) as chunks:
        async for chunk in chunks:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
            yield f"data: {json.dumps(event)}\n\n".encode()
    prompt = sum(int(job.prompt_ids.shape[0]) for job in stream.jobs)
    tokens = stream.stats.tokens
    rate = stream.pipeline.c.sample_rate
    # an extension: where each piece lies in the audio, and the stream's SLOs
    ours: dict[str, Any] = {"sample_rate": rate, "pieces": [
        {"index": i, "start_sample": a, "end_sample": b,
         "start_s": round(a / rate, 6), "end_s": round(b / rate, 6)}
        for i, (a, b) in enumerate(stream.spans)], **stream.slo.summary()}
    if stream.truncated_at_s is not None:  # never silently: AUDIOSERVE_TTS_MAX_OUTPUT_S
        ours["truncated_at_s"] = stream.truncated_at_s
    done = {"type": "speech.audio.done",
            "usage": {"input_tokens": prompt, "output_tokens": tokens,
                      "total_tokens": prompt + tokens},
            "audioserve": ours}
    yield f"data: {json.dumps(done)}\n\n".encode()


_SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_SPEECH_ANSWERS = audio_responses(_SPEECH_FORMATS, "Streamed as generated unless "
                                  "`stream: false` (FLAC: whole unless `stream: true`).")
IGNORED_FIELD = "X-Audioserve-Ignored"
_SPEECH_ANSWERS[200]["headers"] = {  # a copy: /tts shares the rest
    **_SPEECH_ANSWERS[200]["headers"],
    IGNORED_FIELD: {"description": "Fields given that have no effect here, and why "
                                   "(`instructions`).", "schema": {"type": "string"}}}
_SPEECH_ANSWERS[200]["content"]["text/event-stream"] = {
    "schema": {"type": "string"},
    "description": "`stream_format: sse`: `speech.audio.delta` events (base64 audio), then "
                   "`speech.audio.done` with `usage` (input: the prompt's tokens, output: "
                   "the audio-code tokens)."}


def _ignored(body: SpeechBody) -> dict[str, str]:
    """The fields given that have no effect here, said in a header (the speech socket says
    them on `audio.start`): a client is not left to think its `instructions` were used."""
    return ({IGNORED_FIELD: "instructions (ChatTTS takes no style instructions)"}
            if body.instructions else {})


@router.post("/v1/audio/speech", response_class=Response,
             responses={**_SPEECH_ANSWERS, **OPENAI_TTS_ERRORS})
async def speech(body: SpeechBody, request: Request) -> Response:
    check_text(body.input, get_settings(request).tts_max_text_chars, field="input")
    pipeline: ChatTTSPipeline = get_pipeline(request, "chattts")
    req = _speech_request(body)
    streamed = body.stream if body.stream is not None else req.format != "flac"
    if streamed or body.stream_format == "sse":
        path = "sse" if body.stream_format == "sse" else "http"
        stream = await start_stream(request, pipeline, req, path)
        if stream is None:
            return Response(status_code=CLIENT_CLOSED)
        try:
            headers = {**stream_headers(pipeline, stream), **_ignored(body)}
            if body.stream_format != "sse":
                return streaming_response(request, stream, headers)
            headers.pop("Content-Disposition")  # events, not a speech.<format> file
            return streaming_response(request, stream, headers, _sse(request, stream),
                                      "text/event-stream")
        except BaseException:
            stream.abort()
            raise
    try:
        result = await cancel_on_disconnect(request, pipeline.synthesize(req))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return Response(content=result.audio, media_type=MEDIA_TYPES[req.format],
                    headers={**response_headers(result, pipeline), **_ignored(body),
                             **attachment(req.format)})
