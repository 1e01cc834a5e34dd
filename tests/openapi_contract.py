"""Every answer the service sends in the test suite, checked against its route's OpenAPI:
its status is documented, its media type is one the status declares, and a JSON body
validates against the declared schema (jsonschema, OAS 3.1 = JSON Schema 2020-12). So
the docs cannot drift from the code: a test that provokes an undocumented status, or an
answer of another shape, fails (tests/conftest.py checks after every test).

It wraps `Starlette.__call__`, so it sees every app the suite builds (TestClient or a
live server). Answers of paths outside the schema (health, docs, aliases), of methods a
path lacks, and 499 (the client left; nobody reads it) are not checked.
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


def check(app: Any, scope: Scope, status: int, content_type: str, body: bytes | None) -> None:
    """One answer against the schema; a problem is appended to `violations`."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    method = scope["method"].lower()
    if template is None or status in UNCHECKED_STATUSES:
        return
    operation = app.openapi().get("paths", {}).get(template, {}).get(method)
    if operation is None:
        return
    where = f"{method.upper()} {scope['path']} -> {status}"
    with _lock:
        checked.append(f"{method.upper()} {template} {status}")
    answers = operation.get("responses", {})
    answer = answers.get(str(status)) or answers.get("default")
    if answer is None:
        _note(f"{where}: status not documented (documented: {sorted(answers)})")
        return
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


def _note(problem: str) -> None:
    with _lock:
        violations.append(problem)


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
        size = 0

        async def watch(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                start.update(status=message["status"], headers=message.get("headers", []))
            elif message["type"] == "http.response.body" and start:
                data = message.get("body", b"")
                size += len(data)
                if size <= MAX_BODY:
                    chunks.append(data)
                if not message.get("more_body", False):
                    headers = {k.lower(): v for k, v in start["headers"]}
                    content_type = headers.get(b"content-type", b"").decode("latin-1")
                    check(self, scope, start["status"], content_type,
                          b"".join(chunks) if size <= MAX_BODY else None)
                    start.clear()
            await send(message)

        await original(self, scope, receive, watch)

    Starlette.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        Starlette.__call__ = original  # type: ignore[method-assign]
