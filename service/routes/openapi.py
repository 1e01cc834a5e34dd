"""The OpenAPI schema as the service really answers, fixed once for every route.

FastAPI documents a `{"detail": [...]}` 422 (HTTPValidationError) on every route with a
body or parameters; the service never sends it: service.errors answers `{"error": {...}}`,
in OpenAI's shape on the routes that declare it. Here each such 422 points at the body the
route really sends, and the unused schemas go. With an API key set, the schema declares
the bearer scheme the auth middleware checks, so Swagger UI's Authorize button works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.routes.responses import ERRORS, ErrorBody, OpenAIErrorBody
from service.settings import Settings

_FASTAPI_422 = ("HTTPValidationError", "ValidationError")
BEARER = "bearerAuth"


def _ref(model: type) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _real_422(path: str, openai_paths: set[str]) -> dict[str, Any]:
    model = OpenAIErrorBody if path in openai_paths else ErrorBody
    return {"description": ERRORS[422]["description"],
            "content": {"application/json": {"schema": _ref(model)}}}


def _add_common(operation: dict[str, Any], openai: bool, keyed: bool) -> None:
    """The answers any route may give before or around its handler: the API key's 401,
    the body limits' 400/408/413 (routes that take a body), an internal error's 500."""
    statuses = [500, *([401] if keyed else []),
                *([400, 408, 413] if "requestBody" in operation else [])]
    model = OpenAIErrorBody if openai else ErrorBody
    answers = operation.setdefault("responses", {})
    for status in statuses:
        answers.setdefault(str(status), {
            "description": ERRORS[status]["description"],
            "content": {"application/json": {"schema": _ref(model)}}})


def build_schema(app: FastAPI, settings: Settings,
                 is_public: Callable[[str], bool] = lambda path: False) -> dict[str, Any]:
    """`is_public(path)`: the paths served without the key (health, metrics): no 401 and
    no security requirement for them."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description=app.description)
    openai_paths = set(getattr(app.state, "error_formatters", {}))
    keyed = settings.api_key is not None
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            answer = operation.get("responses", {}).get("422")
            if answer is not None and "HTTPValidationError" in str(answer):
                operation["responses"]["422"] = _real_422(path, openai_paths)
            _add_common(operation, path in openai_paths, keyed and not is_public(path))
            if keyed and is_public(path):
                operation["security"] = []  # overrides the schema-wide bearer scheme
    components = schema.setdefault("components", {})
    for name in _FASTAPI_422:
        components.get("schemas", {}).pop(name, None)
    if settings.api_key is not None:
        components["securitySchemes"] = {BEARER: {
            "type": "http", "scheme": "bearer",
            "description": "The API key (AUDIOSERVE_API_KEY): `Authorization: Bearer <key>`."}}
        schema["security"] = [{BEARER: []}]
    return schema


def install_openapi(app: FastAPI, settings: Settings,
                    is_public: Callable[[str], bool] = lambda path: False) -> None:
    """`app.openapi()` builds `build_schema` once, on the first ask."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, settings, is_public)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
