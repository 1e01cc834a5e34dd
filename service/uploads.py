"""Reading an audio request: multipart (`file` + form fields) or JSON with base64 `audio`.

Both shapes end as one `AudioInput`, so each route validates its fields once whatever the
client sent. The byte limit is checked on the audio itself (the middleware already capped
the whole body while it streamed in).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.settings import Settings

_MAX_FORM_FIELDS = 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class AudioInput:
    data: bytes
    fields: dict[str, list[Any]] = field(default_factory=dict)
    """Every other field, as lists (multipart fields can repeat; JSON lists stay lists)."""
    filename: str | None = None
    content_type: str | None = None
    json_lists: frozenset[str] = frozenset()
    """Fields sent as JSON lists (a multipart client repeats a field instead)."""

    def first(self, name: str, default: Any = None) -> Any:
        values = self.fields.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[Any]:
        return list(self.fields.get(name, []))

    def flag(self, name: str) -> bool:
        """A boolean field: JSON true/false, or 1/0, true/false, yes/no, on/off as text."""
        raw = self.first(name, False)
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidInput(f"{name} must be true or false, not {raw!r}")


async def read_audio_input(request: Request, settings: Settings) -> AudioInput:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        result = await _from_multipart(request)
    elif content_type == "application/json":
        result = await _from_json(request)
    else:
        raise UnsupportedMedia(
            f"content type {content_type or 'missing'!r}: send multipart/form-data with a "
            "`file` part, or application/json with base64 `audio`"
        )
    if len(result.data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"audio upload is {len(result.data)} bytes; the limit is "
            f"{settings.max_upload_bytes} (AUDIOSERVE_MAX_UPLOAD_BYTES)"
        )
    if not result.data:
        raise InvalidInput("the audio upload is empty")
    return result


async def _from_multipart(request: Request) -> AudioInput:
    try:
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    except Exception as exc:  # multipart errors come from several layers
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("multipart body has no `file` part holding the audio")
    try:
        data = await upload.read()
    finally:
        await upload.close()
    fields: dict[str, list[Any]] = {}
    for key, value in form.multi_items():
        if key != "file" and isinstance(value, str):
            fields.setdefault(key, []).append(value)
    return AudioInput(
        data=data, fields=fields, filename=upload.filename, content_type=upload.content_type
    )


async def _from_json(request: Request) -> AudioInput:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("JSON body must be an object with a base64 `audio` field")
    encoded = body.pop("audio", None)
    if not isinstance(encoded, str):
        raise InvalidInput("JSON body needs `audio`: the file's bytes as a base64 string")
    if "," in encoded[:64] and encoded.startswith("data:"):
        encoded = encoded.split(",", 1)[1]  # a data: URL as browsers produce it
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"`audio` is not valid base64: {exc}") from exc
    fields = {k: v if isinstance(v, list) else [v] for k, v in body.items() if v is not None}
    lists = frozenset(k for k, v in body.items() if isinstance(v, list))
    return AudioInput(data=data, fields=fields, json_lists=lists)
