"""Strict JSON for request bodies, parsed in the CPU pool, never on the event loop.

Python's `json` accepts what no client means and what later code cannot hold: `NaN`,
`Infinity`, `1e309` (parsed as inf), integers of thousands of digits (ValueError at
4,300, slow well before), and nesting deep enough to raise RecursionError. Each of those
became a 500. Here they are a 400 naming the problem. `JsonBodyRoute` parses the body of
every JSON route this way in the CPU pool (a 34 MB body took 1.8 s of the event loop),
after the auth middleware let it through and while the body limits still apply.

Structure is bounded before a tree is built (`JsonLimits`): no route takes more than a
flat object with a list or two, yet a 33 MB `{"audio": "...", "pad": [[],[],...]}` built
millions of objects, and the C parser and the garbage collector held the GIL for ~2 s a
request even in the pool. A byte count of brackets and commas (memchr speed, ~3 ms for
33 MB; brackets inside strings count too, so the limits are generous) refuses it first.
A string holding a lone UTF-16 surrogate (`"\ud800"`: JSON allows the escape, no
encoder takes the result) is a 422 naming its field, found only when the bytes hold a
surrogate escape.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.errors import BadRequest, InvalidInput, UnsupportedMedia
from service.runtime.admission import CpuWorkers
from service.settings import Settings

MAX_INT_DIGITS = 40
"""Longer integer literals are refused (no field of ours takes more than 20 digits)."""


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; send a finite number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range for a 64-bit float")
    return value


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits; at most {MAX_INT_DIGITS} are taken")
    return int(text)


@dataclass(frozen=True)
class JsonLimits:
    max_containers: int = 10_000
    """Arrays and objects (`[` and `{` bytes) in one body."""
    max_items: int = 200_000
    """Elements and members (`,` bytes) in one body."""


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
"""A UTF-16 surrogate escape, or one encoded raw (json.loads takes it: 'surrogatepass')."""


def check_structure(body: bytes | str, limits: JsonLimits) -> None:
    """Refuse a body with more arrays/objects or elements than any route takes, before
    it is parsed (see the module's note)."""
    if (problem := structure_problem(body, limits, "the JSON body")) is not None:
        raise BadRequest(problem)


def structure_problem(body: bytes | str, limits: JsonLimits, what: str) -> str | None:
    """What is over `limits` in JSON text `body` (`what`, in the message), or None; the
    WebSocket protocols say it in their own error."""
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    containers = data.count(b"[") + data.count(b"{")
    if containers > limits.max_containers:
        return (f"{what} holds {containers} `[`/`{{` (arrays and objects, counted in "
                f"strings too); at most {limits.max_containers} are taken "
                "(AUDIOSERVE_JSON_MAX_CONTAINERS)")
    items = data.count(b",")
    if items > limits.max_items:
        return (f"{what} holds {items} commas (elements, counted in strings too); at most "
                f"{limits.max_items} are taken (AUDIOSERVE_JSON_MAX_ITEMS)")
    return None


def loads(body: bytes | str, limits: JsonLimits | None = None) -> Any:
    """Parse a request body, or BadRequest saying what is wrong with it (InvalidInput for
    a string that is not Unicode text)."""
    check_structure(body, limits or JsonLimits())
    try:
        value = json.loads(body, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if _may_hold_surrogate(body) and (problem := _surrogate_problem(value)) is not None:
        raise InvalidInput(problem)
    return value


def lone_surrogate_problem(text: str) -> str | None:
    """What is wrong with a JSON message that a strict parser refused, when the cause is a
    lone surrogate: the field, said as `loads` says it (jiter, which the WebSocket
    protocols parse with, says only "unexpected end of hex escape"). None otherwise."""
    if not _may_hold_surrogate(text):
        return None
    try:
        return _surrogate_problem(json.loads(text))
    except (ValueError, RecursionError):
        return None


def _may_hold_surrogate(body: bytes | str) -> bool:
    """Whether the raw text holds a surrogate, escaped or encoded (the cheap test before
    the parsed value is walked)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return _SURROGATE.search(raw) is not None


def _surrogate_problem(value: Any) -> str | None:
    """The first string of a parsed body that is not Unicode, said with its field."""
    if (where := _lone_surrogate(value, "")) is None:
        return None
    return (f"{where or 'the body'} holds a lone UTF-16 surrogate (like \\ud800), which "
            "is not a character; send valid Unicode text")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path (`labels[3]`, `input`) of the first string, or object key, that is not
    encodable Unicode; None when every one is (surrogate pairs are fine)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _lone_surrogate(item, f"{path}[{i}]")) is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if _lone_surrogate(key, name) is not None:
                return f"a key of {path or 'the body'}"
            if (found := _lone_surrogate(item, name)) is not None:
                return found
    return None


def json_limits(settings: Settings) -> JsonLimits:
    return JsonLimits(settings.json_max_containers, settings.json_max_items)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    """What FastAPI parses as JSON (with its strict content type, not a body without one)."""
    return media_type == "application/json" or media_type.endswith("+json")


class JsonBodyRoute(APIRoute):
    """An APIRoute whose JSON body is parsed strictly, in the CPU pool, before FastAPI
    validates it against the route's model (FastAPI then finds it parsed).

    Any other content type, or none, is a 415 before the body is read, and an empty body
    a 422 that says so. FastAPI would hand such a body (curl's default form encoding, when
    `-H content-type` is forgotten) to the model as bytes and answer 422 "Input should be
    a valid dictionary", and an empty one "Field required", which name nothing the client
    did wrong."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        required = self.body_field.field_info.is_required()

        async def route(request: Request) -> Response:
            media_type = _media_type(request)
            if not _is_json(media_type):
                got = f"content type {media_type!r}" if media_type else "no content type"
                raise UnsupportedMedia(
                    f"{got}: this route takes a JSON body; send "
                    "`Content-Type: application/json` (curl: -H 'content-type: "
                    "application/json')")
            body = await request.body()
            if not body and required:
                raise InvalidInput("the request body is empty: send a JSON object")
            if body:
                cpu: CpuWorkers = request.app.state.cpu
                limits = json_limits(request.app.state.settings)
                request._json = await cpu.run(loads, body, limits)  # request.json()
            return await handler(request)

        return route
