"""One error hierarchy for the whole service, mapped to HTTP in one place (`install_handlers`).

Every refusal a client can see is an `ApiError` subclass carrying its HTTP status and a
stable machine-readable `code`; the message says what was wrong and what is allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Mount, compile_path
from starlette.types import Scope

from batcher import BatcherClosed, DeadlineExceeded, Overloaded

log = logging.getLogger("audioserve.errors")

CLIENT_CLOSED = 499
"""nginx's "client closed request": nobody reads it, the access log does."""


class ApiError(Exception):
    """Base of every error a client may see. Subclasses fix `status` and `code`."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    """Upload bytes, decoded seconds or text length over a configured limit."""

    status, code = 413, "payload_too_large"


class UpgradeRequired(ApiError):
    """Plain HTTP to a WebSocket route."""

    status, code = 426, "upgrade_required"


class UnsupportedMedia(ApiError):
    """The upload is not audio we can decode."""

    status, code = 415, "unsupported_media"


class InvalidInput(ApiError):
    """Well-formed but unusable input: too short, silent, bad labels, bad parameters."""

    status, code = 422, "invalid_input"


class NonFiniteResult(ApiError):
    """A model answered NaN or infinity for this input (the decoder already refuses
    non-finite and absurdly loud audio; this is the net behind it)."""

    status, code = 422, "non_finite_result"


class ServiceOverloaded(ApiError):
    status, code = 503, "overloaded"


class ModelNotLoaded(ApiError):
    status, code = 503, "model_not_loaded"


class GatewayTimeout(ApiError):
    status, code = 504, "timeout"


class PackError(RuntimeError):
    """A model pack is missing, partial or of another format version (fails start-up)."""


class ReadLimitExceeded(Exception):
    """A request body over a reading limit (service.edge.read_limits). Not an ApiError on
    purpose: it is answered by the middleware that owns the limit, at once and without
    reading more of the body, never by a route's handler."""

    status: int = 400
    code: str = "read_limit"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Formatter = Callable[[int, str, str], dict[str, Any]]
"""(status, code, message) -> a route's own error body (e.g. OpenAI's shape)."""

MAX_PROBLEMS = 5
"""Problems one error message lists (the rest are counted): 200,000 invalid items had
made a 34 MB 422."""
MAX_MESSAGE_CHARS = 2000
"""The longest error message, HTTP or WebSocket: a message quoting what the client sent
(a 900 KB `format`) is cut here, saying so."""


MAX_PROBLEM_CHARS = 300
"""The longest of the problems one message lists (an unknown field's 30 KB name)."""


def capped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, cut to `limit` characters with the count of what was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


def join_problems(problems: Sequence[str], total: int) -> str:
    """The first MAX_PROBLEMS of a request's `total` problems on one line, then how many
    more (callers build only the first few: pydantic's list of them can be long)."""
    shown = "; ".join(capped(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS])
    more = total - min(len(problems), MAX_PROBLEMS)
    return f"{shown}; and {more} more" if more > 0 else shown


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": capped(message), **extra}}


def error_body_for(scope: Scope, status: int, code: str, message: str) -> dict[str, Any]:
    """The error body for this request: the shape of the route's API (a route class may
    declare `error_formatter`, see `install_handlers`), with the request id."""
    app = scope.get("app")
    formatters: dict[str, Formatter] = getattr(getattr(app, "state", None),
                                               "error_formatters", {})
    formatter = _formatter_for(formatters, scope.get("path", ""))
    if formatter is not None:
        return formatter(status, code, capped(message))
    request_id = scope.get("state", {}).get("request_id")
    return error_body(code, message, request_id=request_id)


def _formatter_for(formatters: dict[str, Formatter], path: str) -> Formatter | None:
    """By path, or by a template's match (`/v1/audio/voices/{voice_id}`)."""
    found = formatters.get(path)
    if found is None:
        found = next((f for template, f in formatters.items() if "{" in template
                      and compile_path(template)[0].fullmatch(path)), None)
    return found


def _response(request: Request, status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> JSONResponse:
    body = error_body_for(request.scope, status, code, message)
    return JSONResponse(body, status_code=status, headers=headers)


def to_api_error(exc: Exception) -> ApiError | None:
    """Translate the batcher's own (HTTP-agnostic) errors into API errors."""
    if isinstance(exc, Overloaded):
        retry_after = max(1, math.ceil(exc.retry_after_s))
        return ServiceOverloaded(str(exc), headers={"Retry-After": str(retry_after)})
    if isinstance(exc, DeadlineExceeded):
        return GatewayTimeout(str(exc))
    if isinstance(exc, BatcherClosed):
        return ServiceOverloaded(
            "the service is shutting down", headers={"Retry-After": "5"}
        )
    return None


ABORT_EXTENSION = "audioserve.abort"
"""`scope["extensions"][ABORT_EXTENSION]()` drops the connection at once (TCP reset, the
unsent buffer discarded); the server (service.edge.server) puts it in every request's scope. A
response given up on a client that stopped reading calls it: a plain close waits for that
client to read the megabytes already queued, so its connection would stay open, counted
against the connection cap, for as long as it likes."""
TRAILERS_EXTENSION = "http.response.trailers"
"""ASGI's response-trailers extension, which the server (service.edge.server) offers where
an answer can carry trailers (HTTP/1.1, not HEAD): the app sends `http.response.start`
with `"trailers": True`, its body, then `{"type": "http.response.trailers", "headers":
[...], "more_trailers": False}`. A streamed TTS answer states its pieces' spans so."""
DRAIN_TIMEOUT_S = 5.0


async def drain_body(request: Request) -> None:
    """Read what is left of the request body before an early answer (a refusal before
    the upload was read). Closing a connection with unread bytes makes the kernel reset it,
    and the reset throws away the answer on the client's side: under overload, a shed
    upload got no 503 at all (2,426 of 4,781 at 4x capacity). The body limit still applies
    (the limit's own 413 wins); a body already read, or a client gone, needs nothing; a
    client too slow to send the rest within `DRAIN_TIMEOUT_S` is not waited for."""
    # consumed already, client gone, too slow, or over a reading limit
    with contextlib.suppress(RuntimeError, ClientDisconnect, TimeoutError, ReadLimitExceeded):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in request.stream():
                pass


def error_formatters(routes: Iterable[BaseRoute]) -> dict[str, Formatter]:
    """path -> formatter, for routes whose class declares `error_formatter`."""
    return {route.path: formatter for route in routes if isinstance(route, APIRoute)
            and (formatter := getattr(route, "error_formatter", None)) is not None}


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette's 405 names only those of the
    first route that matches the path, so a path served by a GET route and a POST route
    (`/v1/voices`) answered `Allow: GET` (RFC 9110: a 405 lists all of them). Asked of the
    routes themselves (`matches`), so included routers count; mounted apps (static files)
    answer their own 405s."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    methods = {method for method in METHODS if any(
        route.matches({**request.scope, "method": method})[0] == Match.FULL
        for route in routes)}
    if "GET" in methods:
        methods.add("HEAD")  # edge.middleware.HeadAsGetMiddleware answers it as GET
    return sorted(methods)


def install_handlers(app: FastAPI, formatters: dict[str, Formatter] | None = None) -> None:
    """Map every error type to the JSON error shape `{"error": {"code", "message"}}`, or
    to the shape a route declares (`formatters`, see `error_formatters`)."""
    app.state.error_formatters = formatters or {}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        await drain_body(request)
        return _response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        await drain_body(request)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        detail = str(exc.detail)
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = (f"{request.method} is not allowed on {request.url.path}; "
                      f"allowed: {', '.join(allowed)}")
        return _response(request, exc.status_code, code, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:MAX_PROBLEMS]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        message = join_problems(parts, len(exc.errors())) or "invalid request"
        return _response(request, 422, "invalid_input", message)

    @app.exception_handler(Overloaded)
    @app.exception_handler(DeadlineExceeded)
    @app.exception_handler(BatcherClosed)
    async def _batcher(request: Request, exc: Exception) -> JSONResponse:
        await drain_body(request)
        api = to_api_error(exc)
        assert api is not None
        return _response(request, api.status, api.code, api.message, api.headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client left before its body was in (any JSON or upload route): nobody is
        there to answer, so one log line and no traceback; 499 for the access log."""
        log.info("client disconnected before its request body was read (request %s)",
                 getattr(request.state, "request_id", None))
        return Response(status_code=CLIENT_CLOSED)

    # A defect (any other exception) is answered by service.edge.middleware, where the
    # request id and the connection are: see `_send_internal_error` there.
