"""The web page and the API docs, both served by the app itself so that they work offline.

- `GET /`: the page (service/static/index.html); its scripts, styles and icon lie under
  `/ui/` (service/static, shipped in the package; no build step).
- `GET /docs` (Swagger UI) and `GET /redoc` (ReDoc), their files under `/docs/assets/`:
  fastapi-offline's copies, mounted by `FastAPIOffline(static_url=DOCS_ASSETS_PREFIX)`.

Every page carries a Content-Security-Policy that allows this origin only, so no script,
style, image or request can reach another host: the browser refuses it (and says so in
its console). Swagger UI's online validator badge (which would fetch an image from
validator.swagger.io for any non-localhost server) is switched off.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(str(resources.files("service") / "static"))
"""The package's static folder (found from the package, not from this module's place)."""
UI_PREFIX = "/ui"
"""Everything the page loads (scripts, styles, icon) lies under this prefix."""
DOCS_ASSETS_PREFIX = "/docs/assets"
"""Swagger UI's and ReDoc's self-hosted files."""
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

_SELF_ONLY = ("default-src 'self'", "img-src 'self' data: blob:", "connect-src 'self'",
              "object-src 'none'", "base-uri 'self'", "frame-ancestors 'none'")
PAGE_CSP = "; ".join((*_SELF_ONLY, "media-src 'self' blob:", "script-src 'self'",
                      "style-src 'self'", "form-action 'self'"))
# FastAPI's docs pages start their viewer with an inline script; ReDoc injects its styles
# and runs its search index in a blob: worker; Swagger UI hands an audio answer over as
# a blob: URL (its "Download file" link), which a player may open
DOCS_CSP = "; ".join((*_SELF_ONLY, "media-src 'self' blob:", "script-src 'self' 'unsafe-inline'",
                      "style-src 'self' 'unsafe-inline'", "worker-src 'self' blob:",
                      "font-src 'self' data:"))


def add_page(app: FastAPI) -> None:
    """`/` serves the page and `/ui/*` its files; both open to anyone (no API key): the
    page asks for the key when the API answers 401."""
    app.mount(UI_PREFIX, StaticFiles(directory=STATIC_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={
            "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache",
        })


def add_docs(app: FastAPI) -> None:
    """`/docs`, its OAuth2 redirect page, and `/redoc`, on the self-hosted files."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PREFIX}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_PREFIX}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
