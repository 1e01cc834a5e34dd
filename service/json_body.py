"""Strict JSON for request bodies, parsed in the CPU pool, never on the event loop.

Python's `json` accepts what no client means and what later code cannot hold: `NaN`,
`Infinity`, `1e309` (parsed as inf), integers of thousands of digits (ValueError at
4,300, slow well before), and nesting deep enough to raise RecursionError. Each of those
became a 500. Here they are a 400 naming the problem. `JsonBodyRoute` parses the body of
every JSON route this way in the CPU pool (a 34 MB body took 1.8 s of the event loop),
after the auth middleware let it through and while the body limits still apply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.admission import CpuWorkers
from service.errors import BadRequest

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


def loads(body: bytes | str) -> Any:
    """Parse a request body, or BadRequest saying what is wrong with it."""
    try:
        return json.loads(body, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def _is_json(request: Request) -> bool:
    """What FastAPI would parse as JSON: no content type, or a JSON one."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    main = content_type.split(";")[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


class JsonBodyRoute(APIRoute):
    """An APIRoute whose JSON body is parsed strictly, in the CPU pool, before FastAPI
    validates it against the route's model (FastAPI then finds it parsed)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def route(request: Request) -> Response:
            if _is_json(request):
                body = await request.body()
                if body:
                    cpu: CpuWorkers = request.app.state.cpu
                    request._json = await cpu.run(loads, body)  # what request.json() returns
            return await handler(request)

        return route
