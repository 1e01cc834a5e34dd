"""OpenAI's voices API on ChatTTS: `POST /v1/audio/voices` (what the openai SDK's
`client.audio.voices.create` sends), `GET /v1/audio/voices`, `DELETE
/v1/audio/voices/{voice_id}`, answered with OpenAI's objects (`audio.voice`,
`audio.voice.deleted`) and errors. A voice's `id` is its name, so `{"id": "<name>"}` in
a speech request finds it; the store is /v1/voices' (service/tts/voices.py).

What ChatTTS can and cannot do here:
- `type: "audio_sample"` (the SDK's default: a recording to clone): ChatTTS has no
  speaker encoder, its voices are sampled speaker vectors; refused with a 422 that says so.
- `type: "prompt"`: ChatTTS takes no description of a voice either, so `prompt` is read
  as a voice spec: a voice's name or a weighted mix (`alloy(2)+echo(1)`), or an `spk_emb`
  string; text that is none of those is a 422 that says what `prompt` takes here.
- extensions (`extra_body`): `seed` or `spk_emb` instead of `prompt`, `overwrite`.
The SDK sends multipart/form-data; JSON is taken too.
"""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import ApiError, InvalidInput, UnsupportedMedia
from service.pipelines.chattts import ChatTTSPipeline
from service.routes.field_rules import VOICE_NAME
from service.routes.json_body import loads
from service.routes.multipart import parse_multipart, text_field
from service.routes.openai_speech import OpenAIRoute
from service.routes.params import describe
from service.routes.responses import Answer, openai_errors, path_example
from service.routes.upload_schema import form_schema
from service.routes.uploads import JSON, MAX_FORM_PARTS, MULTIPART
from service.routes.voices import pipeline_of
from service.tts.voices import Voice, VoiceStore, check_name

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


class VoiceFromSampleUnsupported(ApiError):
    status, code = 422, "voice_from_audio_sample_unsupported"


class CreateVoiceBody(BaseModel):
    """Both shapes of the body (JSON, and the SDK's form: service.routes.upload_schema)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["warm-narrator"], json_schema_extra=VOICE_NAME)
    type: Literal["prompt", "audio_sample"] | None = Field(
        None, description="`audio_sample` is refused (422): ChatTTS cannot clone.")
    prompt: str | None = Field(None, examples=["alloy(2)+echo(1)"], description=(
        "A voice spec: a name, a mix `a(2)+b(1)` or an spk_emb."))
    consent: str | None = None
    model: str | None = None
    script_hint: str | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description=(
        "Extension: a seeded random speaker (instead of `prompt`)."))
    spk_emb: str | None = Field(None, description=(
        "Extension: an upstream speaker string (instead of `prompt`)."))
    overwrite: bool = False


class VoiceObject(Answer):
    """OpenAI's `audio.voice`; `source`, `builtin`, `seed` and `mix` are this server's."""

    id: str
    object: str = "audio.voice"
    name: str
    type: str
    created_at: int
    prompt: str | None = None


class VoiceList(BaseModel):
    object: str = "list"
    data: list[VoiceObject]
    truncated: bool


class VoiceDeleted(BaseModel):
    id: str
    deleted: bool
    object: str = "audio.voice.deleted"


_SAMPLE = ("ChatTTS cannot make a voice from an audio sample: it has no speaker encoder (its "
           "voices are sampled speaker vectors). Create one with type 'prompt' and a "
           "`prompt` naming a voice or a mix of voices (alloy(2)+echo(1)), or with `seed` or "
           "`spk_emb` (extensions)")


def voice_object(voice: Voice, created_at: int) -> dict[str, Any]:
    prompt = voice.mix or (voice.name if voice.builtin else None)
    return {"id": voice.name, "object": "audio.voice", "name": voice.name, "type": "prompt",
            "created_at": created_at, **({"prompt": prompt} if prompt else {}),
            **voice.public()}


def _fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The form's or the JSON's fields; an `audio_sample` file is refused (CPU work)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == MULTIPART:
        parts = parse_multipart(content_type, body, MAX_FORM_PARTS)
        if any(p.name == "audio_sample" for p in parts):
            raise VoiceFromSampleUnsupported(_SAMPLE)
        return {p.name: text_field(p) for p in parts if p.data}  # an empty field is unset
    if kind in (JSON, ""):
        parsed = loads(body)
        if not isinstance(parsed, dict):
            raise InvalidInput("the body must be a JSON object")
        return parsed
    raise UnsupportedMedia(f"content type {kind!r}: send multipart/form-data or "
                           "application/json")


def create(store: VoiceStore, content_type: str, body: bytes) -> dict[str, Any]:
    try:
        fields = CreateVoiceBody.model_validate(_fields(content_type, body))
    except ValidationError as exc:
        raise InvalidInput(describe(exc, CreateVoiceBody)) from None
    given = [x is not None for x in (fields.prompt, fields.seed, fields.spk_emb)]
    if fields.type == "audio_sample" or not any(given):
        raise VoiceFromSampleUnsupported(_SAMPLE)
    if sum(given) > 1:
        raise InvalidInput("send one of `prompt`, `seed` or `spk_emb`, not several")
    try:  # the name first: a bad one is not the prompt's fault
        check_name(fields.name)
    except InvalidInput as exc:
        raise InvalidInput(f"name: {exc.message}") from None
    try:
        voice = store.save(fields.name, seed=fields.seed, spk_emb=fields.spk_emb,
                           mix=fields.prompt, overwrite=fields.overwrite)
    except InvalidInput as exc:
        if fields.prompt is None:
            raise
        raise InvalidInput(f"prompt: ChatTTS takes no description of a voice; here `prompt` "
                           f"is a voice spec: a voice's name, a mix like alloy(2)+echo(1), or "
                           f"an spk_emb string ({exc.message})") from None
    return voice_object(voice, int(time.time()))


@router.post("/v1/audio/voices", response_model=VoiceObject,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": CreateVoiceBody.model_json_schema(), "example": {
                     "name": "warm-narrator", "type": "prompt", "prompt": "alloy(2)+echo(1)",
                     "overwrite": True}},
                 "multipart/form-data": {"schema": form_schema(CreateVoiceBody)}}}},
             responses=openai_errors(400, 401, 403, 409, 413, 415, 422, 503))
async def create_voice(request: Request) -> dict[str, Any]:
    """Save a voice (OpenAI's `audio.voice`); see the module's note for what ChatTTS takes."""
    pipeline: ChatTTSPipeline = pipeline_of(request)
    body = await request.body()
    return await pipeline.ctx.cpu.run(create, pipeline.voices,
                                      request.headers.get("content-type", ""), body)


def _listing(store: VoiceStore) -> dict[str, Any]:
    listing = store.listing()
    return {"object": "list", "truncated": listing.truncated,
            "data": [voice_object(v, store.created_at(v.name)) for v in listing.voices]}


@router.get("/v1/audio/voices", response_model=VoiceList, responses=openai_errors(401, 503))
async def list_audio_voices(request: Request) -> dict[str, Any]:
    """Built-in voices (OpenAI's names), then saved ones, as `audio.voice` objects."""
    pipeline = pipeline_of(request)
    return await pipeline.ctx.cpu.run(_listing, pipeline.voices)


@router.delete("/v1/audio/voices/{voice_id}", response_model=VoiceDeleted,
               responses=openai_errors(401, 403, 404, 409, 422, 503))
async def delete_audio_voice(voice_id: Annotated[str, path_example("warm-narrator", VOICE_NAME)],
                             request: Request) -> dict[str, Any]:
    """Delete a saved voice (built-in ones cannot be: 409)."""
    pipeline = pipeline_of(request)
    await pipeline.ctx.cpu.run(functools.partial(pipeline.voices.delete, voice_id))
    return {"id": voice_id, "deleted": True, "object": "audio.voice.deleted"}
