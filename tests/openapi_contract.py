"""Every answer the service sends in the test suite, checked against its route's OpenAPI:
its status is documented, its media type is one the status declares, and a JSON body
validates against the declared schema (jsonschema, OAS 3.1 = JSON Schema 2020-12), a
declared header's value against its schema, and every HTTP trailer sent (ASGI's
`http.response.trailers`) is declared among the answer's headers and matches its schema
(OpenAPI has no trailers: a trailer is documented as a header the description says comes
after the body). So the docs cannot drift from the code: a test that provokes an
undocumented status, or an answer of another shape, fails (tests/conftest.py checks
after every test).

It wraps `Starlette.__call__`, so it sees every app the suite builds (TestClient or a
live server). The server only records each answer (its status, media type, headers,
trailers and, for JSON, its body); the checks run after the test (`check_pending`),
never on the server's event loop, so tests that time the server measure the server.
Answers of paths outside the schema (health, docs, aliases), of methods a path lacks, and
499 (the client left; nobody reads it) are not checked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

MAX_BODY = 8 * 1024 * 1024
"""JSON bodies up to this size are validated (a larger one is only status-checked)."""
UNCHECKED_STATUSES = {499}
_ROOT = "urn:audioserve-openapi"

violations: list[str] = []
Fields = dict[str, str]
pending: list[tuple[Any, str | None, str, str, int, str, bytes | None, Fields, Fields,
                   bytes | None]] = []
"""(app, route template, method, path, status, content type, JSON body, headers,
trailers, JSON request body) to check."""
checked: list[str] = []
"""`METHOD template status` of every answer checked (a test that the checker runs)."""
_lock = threading.Lock()


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _validator(app: Any, pointer: str) -> Draft202012Validator:
    cache: dict[str, Draft202012Validator] = app.state.__dict__.setdefault(
        "_contract_validators", {})
    found = cache.get(pointer)
    if found is None:
        resource = Resource.from_contents(app.openapi(), default_specification=DRAFT202012)
        registry: Registry[Any] = Registry().with_resource(_ROOT, resource)
        found = cache[pointer] = Draft202012Validator({"$ref": f"{_ROOT}#{pointer}"},
                                                      registry=registry)
    return found


def check_pending() -> list[str]:
    """Check every answer recorded so far; the problems found (also left in `violations`)."""
    with _lock:
        answers = list(pending)
        pending.clear()
    for answer in answers:
        check(*answer)
    with _lock:
        return list(violations)


def check(app: Any, template: str | None, method: str, path: str, status: int,
          content_type: str, body: bytes | None, headers: Fields | None = None,
          trailers: Fields | None = None, request: bytes | None = None) -> None:
    """One answer against the schema; a problem is appended to `violations`. Header and
    trailer names are lower case. A JSON request the server took (2xx) must be one its
    schema allows: else a client generated from the schema cannot send what works."""
    method = method.lower()
    if template is None or status in UNCHECKED_STATUSES:
        return
    operation = app.openapi().get("paths", {}).get(template, {}).get(method)
    if operation is None:
        return
    where = f"{method.upper()} {path} -> {status}"
    with _lock:
        checked.append(f"{method.upper()} {template} {status}")
    answers = operation.get("responses", {})
    answer = answers.get(str(status)) or answers.get("default")
    if answer is None:
        _note(f"{where}: status not documented (documented: {sorted(answers)})")
        return
    _check_fields(where, answer, headers or {}, trailers or {})
    if request is not None and 200 <= status < 300:
        _check_request(app, template, method, where, operation, request)
    media = content_type.split(";")[0].strip().lower()
    content = answer.get("content") or {}
    if status in (204, 304) or not content:
        return
    if media not in content:
        _note(f"{where}: content type {media!r} not documented ({sorted(content)})")
        return
    if media != "application/json" or body is None or "schema" not in content[media]:
        return
    pointer = "/".join(("", "paths", _escape(template), method, "responses", str(status),
                        "content", _escape(media), "schema"))
    try:
        document = json.loads(body)
    except ValueError:
        _note(f"{where}: body is not JSON")
        return
    errors = list(_validator(app, pointer).iter_errors(document))
    if errors:
        _note(f"{where}: body does not match its schema: {errors[0].message[:300]} at "
              f"{list(errors[0].absolute_path)}")


def _check_request(app: Any, template: str, method: str, where: str,
                   operation: dict[str, Any], request: bytes) -> None:
    content = operation.get("requestBody", {}).get("content", {})
    if "schema" not in content.get("application/json", {}):
        return
    try:
        document = json.loads(request)
    except ValueError:
        return
    pointer = "/".join(("", "paths", _escape(template), method, "requestBody", "content",
                        _escape("application/json"), "schema"))
    errors = list(_validator(app, pointer).iter_errors(document))
    if errors:
        _note(f"{where}: the request it took is one its schema refuses: "
              f"{errors[0].message[:300]} at {list(errors[0].absolute_path)}")


def _check_fields(where: str, answer: dict[str, Any], headers: Fields, trailers: Fields
                  ) -> None:
    """Declared headers' values against their schemas; trailers: declared, and the same."""
    declared = {name.lower(): spec.get("schema", {})
                for name, spec in (answer.get("headers") or {}).items()}
    for name in sorted(set(trailers) - set(declared)):
        _note(f"{where}: trailer {name!r} not documented (headers: {sorted(declared)})")
    for kind, fields in (("header", headers), ("trailer", trailers)):
        for name, value in fields.items():
            if name in declared and (problem := _value_problem(declared[name], value)):
                _note(f"{where}: {kind} {name}: {value[:200]!r} {problem}")


def _value_problem(schema: dict[str, Any], value: str) -> str | None:
    """Why a header's value does not match its schema (an integer's is its digits)."""
    if schema.get("type") == "integer":
        return None if value.strip().isdigit() else "is not an integer"
    error = next(Draft202012Validator(schema).iter_errors(value), None)
    return None if error is None else f"does not match its schema: {error.message[:200]}"


def _fields(items: Any) -> Fields:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in items}


def _record(app: Any, scope: Scope, method: str, start: dict[str, Any],
            body: bytes | None, trailers: Fields, request: bytes | None) -> None:
    template = getattr(scope.get("route"), "path", None)
    with _lock:
        pending.append((app, template, method, scope["path"], start["status"],
                        start["content_type"], body if start["json"] else None,
                        start["headers"], trailers, request))


def _note(problem: str) -> None:
    with _lock:
        violations.append(problem)


class _RequestBody:
    """A JSON request's body as the app reads it (None: another type, or past MAX_BODY)."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        content_type = _fields(scope.get("headers", [])).get("content-type", "")
        self.json = content_type.startswith("application/json")
        self._receive = receive
        self._chunks: list[bytes] = []
        self._size = 0

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and self.json:
            self._size += len(message.get("body", b""))
            if self._size <= MAX_BODY:
                self._chunks.append(message.get("body", b""))
        return message

    def body(self) -> bytes | None:
        return b"".join(self._chunks) if self.json and self._size <= MAX_BODY else None


@contextmanager
def checking() -> Iterator[None]:
    """While active, every audioserve app's answers are checked (see the module's note)."""
    original = Starlette.__call__

    async def call(self: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not hasattr(self.state, "error_formatters"):
            await original(self, scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        trailers: Fields = {}
        size = 0
        method = scope["method"]  # as sent: the app may answer a HEAD as its GET
        request = _RequestBody(scope, receive)

        async def watch(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                headers = _fields(message.get("headers", []))
                content_type = headers.get("content-type", "")
                start.update(status=message["status"], content_type=content_type,
                             json=content_type.startswith("application/json"),
                             headers=headers, trailing=message.get("trailers", False))
            elif message["type"] == "http.response.body" and start:
                data = message.get("body", b"")
                size += len(data)
                if size <= MAX_BODY and start.get("json"):
                    chunks.append(data)
                if not message.get("more_body", False):
                    start["body"] = b"".join(chunks) if size <= MAX_BODY else None
                    if not start["trailing"]:  # else the answer ends with its trailers
                        _record(self, scope, method, start, start["body"], {},
                                request.body())
                        start.clear()
            elif message["type"] == "http.response.trailers" and "body" in start:
                trailers.update(_fields(message.get("headers", [])))
                if not message.get("more_trailers", False):
                    _record(self, scope, method, start, start["body"], dict(trailers),
                            request.body())
                    start.clear()
            await send(message)

        await original(self, scope, request.receive, watch)

    Starlette.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        Starlette.__call__ = original  # type: ignore[method-assign]
