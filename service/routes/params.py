"""The fields of the upload routes as pydantic models: one model per endpoint is both its
validator and its OpenAPI schema.

An upload's fields arrive as form text (multipart) or JSON values (base64 JSON body), so
each field's validator takes both: `"true"` and `true`, `"3"` and `3`. A form field sent
twice where one value is meant is refused, not silently narrowed to its first value, and
so is a field the endpoint does not take. Limits that are settings (label counts and
lengths, template length) come in the validation context (`{"settings": Settings}`).
Messages say what was wrong and what is allowed; they become 422s.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Self, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from service.errors import MAX_PROBLEMS, InvalidInput, join_problems
from service.routes.uploads import AudioInput
from service.settings import Settings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_OURS = "audioserve"
_DIGITS = re.compile(r"\+?[0-9]{1,12}")


def refuse(message: str) -> PydanticCustomError:
    """A validation error whose message is complete as it is ("top_k must be ...")."""
    return PydanticCustomError(_OURS, message)


def shown(raw: Any, limit: int = 60) -> str:
    """A client's value for a message: its repr, cut short (a field may be megabytes)."""
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def settings_of(info: ValidationInfo) -> Settings:
    context = info.context or {}
    settings = context.get("settings")
    return settings if isinstance(settings, Settings) else Settings(_env_file=None)


def parse_flag(name: str, raw: Any) -> bool:
    """JSON true/false, or 1/0, true/false, yes/no, on/off as text."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise refuse(f"{name} must be true or false, not {shown(raw)}")


def parse_positive_int(name: str, raw: Any) -> int | None:
    """A whole number >= 1 from JSON or text; None or "" is unset."""
    if raw is None or raw == "":
        return None
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        value = int(raw.strip())  # ASCII only: int() also takes "²" and "٣"
    if value is None:
        raise refuse(f"{name} must be a positive integer, not {shown(raw)}")
    if value < 1:
        raise refuse(f"{name} must be at least 1, not {value}")
    return value


class UploadParams(BaseModel):
    """Base of the upload routes' params (see the module's note)."""

    model_config = ConfigDict(extra="forbid")
    upload_example: ClassVar[dict[str, Any]] = {}
    """Field values for the OpenAPI examples: with any audio file they give a 200."""
    comma_lists: ClassVar[tuple[str, ...]] = ()
    """List fields that a JSON body may also give as one comma-separated string (the
    OpenAPI says so: service.routes.upload_schema)."""

    @model_validator(mode="before")
    @classmethod
    def _one_value_per_field(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if (field is not None and isinstance(value, list)
                    and get_origin(field.annotation) is not list):
                raise refuse(f"{name} was sent {len(value)} times; send one value")
        return data

    @classmethod
    def from_input(cls, form: AudioInput, settings: Settings) -> Self:
        try:
            return cls.model_validate(form.fields, context={"settings": settings})
        except ValidationError as exc:
            raise InvalidInput(describe(exc, cls)) from None


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """One message for all of a model's errors, each naming its field."""
    parts = []
    for err in exc.errors(include_url=False)[:MAX_PROBLEMS]:
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == _OURS:
            parts.append(err["msg"])
        elif err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "no fields besides the audio"
            parts.append(f"unknown field {where!r}; this endpoint takes: {known}")
        else:
            parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return join_problems(parts, exc.error_count())
