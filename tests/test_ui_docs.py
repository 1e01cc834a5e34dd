"""`/docs` (Swagger UI) and `/redoc` render in a browser that can reach no host but the
server: their scripts and styles are served by the app (fastapi-offline's copies), and
they draw every operation of the app's OpenAPI schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.routes.web import DOCS_ASSETS_PREFIX
from tests.tts_server import RunningServer, serve_app
from tests.ui_browser import LOCAL_NAME, Browser, chromium, problems_in, require_browser

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
# ReDoc 2 always draws "API docs by Redocly" with this logo from its CDN: the page's CSP
# blocks it (no request leaves), the browser says so, the image hides itself
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOGO = f"'{REDOC_LOGO_URL}' violates the following Content Security Policy"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_browser()  # no packs: the schema and the docs do not need them
    with serve_app(models_dir=tmp_path_factory.mktemp("no_models"), models="none",
                   warmup=False) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


@pytest.fixture(scope="module")
def schema(server: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.url + "/openapi.json").json()
    return body


@pytest.fixture(scope="module")
def operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    ops = [(method, path) for path, item in schema["paths"].items()
           for method in item if method in HTTP_METHODS]
    assert ("post", "/classify") in ops and ("post", "/tts") in ops
    return ops


def named(server: RunningServer) -> str:
    """The server under a host name that is not localhost: Swagger UI would fetch its
    online validator badge from validator.swagger.io here, if it were left on."""
    return server.url.replace("127.0.0.1", LOCAL_NAME)


def resources(browser: Browser) -> list[str]:
    names: list[str] = json.loads(browser.js(
        "return JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"))
    return names


def test_swagger_ui_renders_every_operation_offline(
        browser: Browser, server: RunningServer, operations: list[tuple[str, str]]) -> None:
    browser.logs()
    browser.driver.get(named(server) + "/docs")
    browser.wait(lambda d: browser.js("return document.querySelectorAll('.opblock').length")
                 == len(operations), 60, "Swagger UI's operations")
    drawn = browser.js(
        "return [...document.querySelectorAll('.opblock')].map(o =>"
        " [o.querySelector('.opblock-summary-method').textContent.toLowerCase(),"
        "  o.querySelector('.opblock-summary-path').dataset.path])")
    assert sorted(map(tuple, drawn)) == sorted(operations)
    loaded = resources(browser)
    assert any(n.endswith(f"{DOCS_ASSETS_PREFIX}/swagger-ui-bundle.js") for n in loaded)
    assert all(n.startswith(named(server) + "/") for n in loaded), loaded
    browser.screenshot("docs")
    problems = browser.problems()
    assert not problems, problems


def test_redoc_renders_every_operation_offline(
        browser: Browser, server: RunningServer, schema: dict[str, Any]) -> None:
    wanted = {op["operationId"] for item in schema["paths"].values()
              for method, op in item.items() if method in HTTP_METHODS}
    browser.logs()
    browser.driver.get(named(server) + "/redoc")

    def drawn(_: Any) -> set[str]:
        ids: list[str] = browser.js("return [...document.querySelectorAll("
                                    "'[data-section-id^=\"operation/\"]')]"
                                    ".map(e => e.dataset.sectionId.slice(10))")
        return set(ids)

    browser.wait(lambda d: drawn(d) == wanted, 60, "ReDoc's operations")
    text = browser.js("return document.body.innerText")
    for item in schema["paths"]:
        assert item in text
    loaded = resources(browser)
    assert any(n.endswith(f"{DOCS_ASSETS_PREFIX}/redoc.standalone.js") for n in loaded)
    logs = browser.logs()
    if REDOC_LOGO_URL in loaded:  # listed, but refused before any request was made
        loaded.remove(REDOC_LOGO_URL)
        assert any(REDOC_LOGO in e["message"] and "blocked" in e["message"] for e in logs)
    assert all(n.startswith((named(server) + "/", "blob:")) for n in loaded), loaded
    browser.screenshot("redoc")
    problems = problems_in(logs + browser.logs(), allowed_messages=(REDOC_LOGO,))
    assert not problems, problems


def test_docs_pages_name_no_other_host(server: RunningServer) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(server.url + page).text
        assert "http://" not in html and "https://" not in html, page
        assert f"{DOCS_ASSETS_PREFIX}/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
                  "favicon.png"):
        r = httpx.get(f"{server.url}{DOCS_ASSETS_PREFIX}/{asset}")
        assert r.status_code == 200 and len(r.content) > 1000, asset

