"""Reading an audio request: multipart (`file` + form fields) or JSON with base64 `audio`.

Both shapes end as one `AudioInput`, so each route validates its fields once (with its
pydantic params model, service.routes.params) whatever the client sent. The body is read
whole first, under the body limits (service.edge.read_limits), and parsed in the CPU pool:
nothing that grows with the upload runs on the event loop. The byte limit is then
checked on the audio itself.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeVar

from fastapi import Request

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.routes import json_body
from service.routes.multipart import parse_multipart, text_field
from service.runtime.admission import CpuWorkers
from service.settings import Settings

MAX_FORM_PARTS = 1024
MULTIPART, JSON = "multipart/form-data", "application/json"


@dataclass(frozen=True)
class AudioInput:
    data: bytes
    fields: dict[str, Any] = field(default_factory=dict)
    """Every other field: a JSON value as sent (null: absent), or a form field's text;
    a form field sent several times is the list of its values."""
    filename: str | None = None
    content_type: str | None = None


class FromInput(Protocol):
    """What the reader needs of a route's params model: to be built from the upload's
    fields (service.routes.params.UploadParams, which imports AudioInput from here)."""

    @classmethod
    def from_input(cls, form: AudioInput, settings: Settings) -> Self: ...


P = TypeVar("P", bound=FromInput)


def body_kind(request: Request) -> str:
    """multipart or JSON, else 415 before any of the body is read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (MULTIPART, JSON):
        raise UnsupportedMedia(
            f"content type {content_type or 'missing'!r}: send multipart/form-data with a "
            "`file` part, or application/json with base64 `audio`"
        )
    return content_type


def check_audio_size(form: AudioInput, settings: Settings) -> None:
    if len(form.data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"audio upload is {len(form.data)} bytes; the limit is "
            f"{settings.max_upload_bytes} (AUDIOSERVE_MAX_UPLOAD_BYTES)"
        )
    if not form.data:
        raise InvalidInput("the audio upload is empty")


def parse_audio_body(kind: str, content_type: str, body: bytes,
                     limits: json_body.JsonLimits | None = None) -> AudioInput:
    """The body's audio and fields (CPU work: call it in the pool)."""
    return (_from_multipart(content_type, body) if kind == MULTIPART
            else _from_json(body, limits))


def _from_multipart(content_type: str, body: bytes) -> AudioInput:
    parts = parse_multipart(content_type, body, MAX_FORM_PARTS)
    files = [p for p in parts if p.name == "file"]
    if not files:
        raise InvalidInput("multipart body has no `file` part holding the audio")
    if len(files) > 1:
        raise InvalidInput(f"multipart body has {len(files)} `file` parts; send one")
    fields: dict[str, Any] = {}
    for part in parts:
        if part.name == "file":
            continue
        value = text_field(part)
        if part.name not in fields:
            fields[part.name] = value
        elif isinstance(fields[part.name], list):
            fields[part.name].append(value)
        else:
            fields[part.name] = [fields[part.name], value]
    upload = files[0]
    return AudioInput(data=upload.data, fields=fields, filename=upload.filename,
                      content_type=upload.content_type)


def _from_json(body: bytes, limits: json_body.JsonLimits | None = None) -> AudioInput:
    parsed = json_body.loads(body, limits)
    if not isinstance(parsed, dict):
        raise InvalidInput("JSON body must be an object with a base64 `audio` field")
    encoded = parsed.pop("audio", None)
    if not isinstance(encoded, str):
        raise InvalidInput("JSON body needs `audio`: the file's bytes as a base64 string")
    data = decode_base64_audio(encoded, "`audio`")
    fields = {k: v for k, v in parsed.items() if v is not None}
    return AudioInput(data=data, fields=fields)


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def decode_base64_audio(encoded: str, field: str) -> bytes:
    """A file's bytes from base64, or from a data: URL as browsers produce it. Line breaks
    are taken (MIME's base64, what GNU `base64` writes, wraps at 76 characters); any other
    character outside the alphabet is refused, naming it and where it is."""
    if "," in encoded[:64] and encoded.startswith("data:"):
        encoded = encoded.split(",", 1)[1]
    if "\n" in encoded:
        encoded = encoded.replace("\r\n", "").replace("\n", "")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = _NOT_BASE64.search(encoded)
        where = (f": {bad.group()!r} at character {bad.start()} is not in base64's alphabet"
                 if bad is not None else f" ({exc})")
        raise InvalidInput(f"{field} is not valid base64{where}") from None


async def read_upload(request: Request, settings: Settings, params: type[P]
                      ) -> tuple[AudioInput, P]:
    """The whole upload read (under the body limits), then parsed and its fields
    validated in the CPU pool: none of that work runs on the event loop."""
    kind = body_kind(request)
    body = await request.body()
    cpu: CpuWorkers = request.app.state.cpu
    return await cpu.run(_parse_upload, kind, request.headers["content-type"], body,
                         settings, params)


def _parse_upload(kind: str, content_type: str, body: bytes, settings: Settings,
                  params: type[P]) -> tuple[AudioInput, P]:
    form = parse_audio_body(kind, content_type, body, json_body.json_limits(settings))
    check_audio_size(form, settings)
    return form, params.from_input(form, settings)
