"""The OpenAPI request body of an upload route, built from its params model.

The upload routes read their body themselves (service.routes.deps.read_upload: whole, then
parsed in the CPU pool), so FastAPI sees no body parameter and would publish none; this
publishes both shapes the route takes, from the same model that validates them:
multipart (a binary `file` plus the fields) and JSON (base64 `audio` plus the fields).
The JSON example carries a real 0.5 s WAV, so Swagger UI's "Try it out" gets a 200 as
it stands, and the multipart form needs only a file picked (its optional fields start
empty, which the params read as unset). `form_schema` does the same for a form of text
fields only (the voices API's).
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import BaseModel

from service.audio.decode import ACCEPTED_FORMATS
from service.routes.params import UploadParams

EXAMPLE_RATE = 16_000


@functools.cache
def example_wav_base64() -> str:
    """0.5 s of a 440 Hz tone with a little noise (audible, so every model takes it)."""
    t = np.arange(EXAMPLE_RATE // 2) / EXAMPLE_RATE
    noise = np.random.default_rng(0).normal(0, 0.01, t.shape)
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wave, EXAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def _fields(params: type[UploadParams]) -> tuple[dict[str, Any], list[str]]:
    schema = params.model_json_schema()
    assert "$defs" not in schema, f"{params.__name__}: keep upload params flat"
    return schema.get("properties", {}), list(schema.get("required", []))


def upload_body(params: type[UploadParams]) -> dict[str, Any]:
    """`openapi_extra` for a route whose fields are `params` (see the module's note)."""
    properties, required = _fields(params)
    audio_note = f"Accepted: {ACCEPTED_FORMATS}; any rate and channel count."
    form_properties = {"file": {"type": "string", "format": "binary",
                                "description": f"The audio file. {audio_note}"},
                       **properties}
    # unknown fields are refused (UploadParams forbids them) in both shapes
    multipart = {
        "type": "object",
        "properties": form_properties,
        "required": ["file", *required],
        "additionalProperties": False,
    }
    as_json = {
        "type": "object",
        "properties": {"audio": {"type": "string", "contentEncoding": "base64", "minLength": 1,
                                 "description": "The audio file's bytes, base64 (a data: URL "
                                                f"is accepted too). {audio_note}"},
                       **{name: _json_field(spec, name in required,
                                            name in params.comma_lists)
                          for name, spec in properties.items()}},
        "required": ["audio", *required],
        "additionalProperties": False,
    }
    lists = [name for name, spec in properties.items() if spec.get("type") == "array"]
    # JSON first: Swagger UI opens the first media type, and the JSON example (with its
    # WAV) then succeeds as shown; the form needs a file picked
    return {"requestBody": {"required": True, "content": {
        "application/json": {
            "schema": as_json,
            "example": {"audio": example_wav_base64(), **params.upload_example},
        },
        "multipart/form-data": {
            "schema": {**multipart, "properties": _form_fields(form_properties)},
            "encoding": {name: {"style": "form", "explode": True} for name in lists},
        },
    }}}


def form_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The multipart/form-data schema of a route whose form fields are `model`'s (a form
    of text fields, validated by that model as the JSON body is)."""
    schema = model.model_json_schema()
    assert "$defs" not in schema, f"{model.__name__}: keep form models flat"
    return {"type": "object", "properties": _form_fields(schema.get("properties", {})),
            "required": list(schema.get("required", [])), "additionalProperties": False}


def _json_field(spec: dict[str, Any], required: bool, comma_list: bool) -> dict[str, Any]:
    """A field as the JSON body takes it: a list also as one comma-separated string, an
    optional field also as null."""
    if comma_list:
        notes = {k: v for k, v in spec.items() if k in ("title", "description", "examples")}
        shape = {k: v for k, v in spec.items() if k not in notes}
        spec = {**notes, "anyOf": [shape, {"type": "string", "pattern": r"\S",
                                           "description": "the items, comma-separated"}]}
    return spec if required else _nullable(spec)


def _nullable(spec: dict[str, Any]) -> dict[str, Any]:
    """A JSON field whose null means unset (service.routes.uploads drops nulls, as OpenAI's
    clients send them for what they leave out)."""
    if "anyOf" in spec:
        nulls = [b for b in spec["anyOf"] if b.get("type") == "null"]
        return spec if nulls else {**spec, "anyOf": [*spec["anyOf"], {"type": "null"}]}
    if isinstance(spec.get("type"), str):
        enum = {"enum": [*spec["enum"], None]} if "enum" in spec else {}
        return {**spec, "type": [spec["type"], "null"], **enum}
    return spec


def _form_fields(properties: dict[str, Any]) -> dict[str, Any]:
    """An optional field without an example of its own starts empty (unset) in the form:
    Swagger UI fills a form field with a sample of its first type otherwise (`top_k` 1,
    which asks for one label)."""
    def blank(spec: dict[str, Any]) -> bool:
        return "examples" not in spec and any(branch.get("type") == "null"
                                              for branch in spec.get("anyOf", ()))

    return {name: {**spec, "example": ""} if blank(spec) else spec
            for name, spec in properties.items()}
