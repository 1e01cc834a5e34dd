"""Swagger UI's "Try it out", as a person uses it, in headless Chromium against the real
app with every model and an API key: authorize with the key, then execute every
operation with the example shown and get its documented success; a TTS answer comes
as a named file that the browser can play."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.clap_fixtures import clap_models_dir, make_clip, wav_bytes  # noqa: F401
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app
from tests.ui_browser import Browser, chromium, require_browser

KEY = "docs-test-key"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, chattts_models_dir: Path,  # noqa: F811
           emotion_models_dir: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_browser()
    root = tmp_path_factory.mktemp("docs_models")
    for kind, source in (("clap", clap_models_dir), ("chattts", chattts_models_dir),
                         ("emotion2vec", emotion_models_dir)):
        (root / kind).symlink_to(source / kind)
    with serve_app(models_dir=root, intra_op_threads=1, warmup=False, api_key=KEY,
                   docs_public=True, tts_max_text_chars=200,
                   voices_dir=tmp_path_factory.mktemp("voices")) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium"), height=1400) as b:
        yield b


@pytest.fixture(scope="module")
def schema(server: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.url + "/openapi.json").json()
    return body


def operations(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, success status): creations before deletions, as a person would."""
    ops = [(method, path, min(s for s in op["responses"] if s.startswith("2")))
           for path, item in schema["paths"].items()
           for method, op in item.items() if method in HTTP_METHODS]
    return sorted(ops, key=lambda op: op[0] == "delete")


def authorize(browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    browser.driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
    field = browser.wait(lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux input"), 20,
                         "the Authorize dialog")
    field.send_keys(KEY)
    browser.driver.find_element(By.CSS_SELECTOR, ".modal-ux button.modal-btn.auth").click()
    browser.driver.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()


def block(browser: Browser, method: str, path: str) -> Any:
    from selenium.webdriver.common.by import By

    for element in browser.driver.find_elements(By.CSS_SELECTOR, f".opblock-{method}"):
        if element.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
                "data-path") == path:
            return element
    raise AssertionError(f"no {method} {path} in Swagger UI")


def open_try_it_out(browser: Browser, method: str, path: str,
                    media_type: str | None = None) -> Any:
    """Open the operation, pick the request's media type if asked, press "Try it out"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    op = block(browser, method, path)
    if "is-open" not in (op.get_attribute("class") or ""):
        browser.js("arguments[0].scrollIntoView()", op)
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    browser.wait(lambda d: op.find_elements(By.CSS_SELECTOR, "button.try-out__btn"), 20,
                 f"{method} {path} to open")
    if media_type is not None:
        Select(op.find_element(By.CSS_SELECTOR, ".opblock-section-request-body select")
               ).select_by_value(media_type)
    button = op.find_element(By.CSS_SELECTOR, "button.try-out__btn")
    if "cancel" not in (button.get_attribute("class") or ""):
        button.click()
    browser.wait(lambda d: op.find_elements(By.CSS_SELECTOR, "button.execute"), 20,
                 f"{method} {path}'s Execute button")
    return op


def execute(browser: Browser, op: Any, what: str) -> str:
    from selenium.webdriver.common.by import By

    op.find_element(By.CSS_SELECTOR, "button.execute").click()
    cell = ".live-responses-table .response-col_status"
    status: str = browser.wait(lambda d: next(
        (e.text.strip() for e in op.find_elements(By.CSS_SELECTOR, cell)
         if e.text.strip().isdigit()), None), 120, f"{what}'s answer")
    return status


def test_every_example_succeeds_as_shown_after_authorizing(
        browser: Browser, server: RunningServer, schema: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    assert "bearerAuth" in schema["components"]["securitySchemes"]
    browser.driver.get(server.url + "/docs")
    browser.wait(lambda d: browser.js("return document.querySelectorAll('.opblock').length"),
                 60, "Swagger UI")
    authorize(browser)
    failures = []
    for method, path, success in operations(schema):
        op = open_try_it_out(browser, method, path)
        status = execute(browser, op, f"{method} {path}")
        if status != success:
            body = op.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight")
            failures.append(f"{method.upper()} {path}: {status}, documented {success}: "
                            f"{body.text[:600]}")
    browser.screenshot("docs-try-it-out")
    assert not failures, "\n\n".join(failures)


def test_tts_answer_downloads_as_a_named_file_that_plays(
        browser: Browser, server: RunningServer) -> None:
    from selenium.webdriver.common.by import By

    browser.driver.get(server.url + "/docs")
    browser.wait(lambda d: browser.js("return document.querySelectorAll('.opblock').length"),
                 60, "Swagger UI")
    authorize(browser)
    op = open_try_it_out(browser, "post", "/tts")
    assert execute(browser, op, "/tts") == "200"
    link = browser.wait(lambda d: op.find_element(By.CSS_SELECTOR, "a[download]"), 30,
                        "the download link")
    assert link.get_attribute("download") == "speech.wav"
    assert link.text == "Download file"
    duration = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const audio = new Audio(arguments[0]);"
        "audio.onloadedmetadata = () => done(audio.duration);"
        "audio.onerror = () => done(-1);", link.get_attribute("href"))
    # the example samples unseeded: the demo pack may end after a token or two (32 ms)
    assert duration > 0


def test_classify_form_sends_no_top_k_unless_asked(
        browser: Browser, server: RunningServer, tmp_path: Path) -> None:
    """The multipart form leaves `top_k` empty: every label comes back."""
    from selenium.webdriver.common.by import By

    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(make_clip(1.0, seed=3)))
    browser.driver.get(server.url + "/docs")
    browser.wait(lambda d: browser.js("return document.querySelectorAll('.opblock').length"),
                 60, "Swagger UI")
    authorize(browser)
    op = open_try_it_out(browser, "post", "/classify", "multipart/form-data")
    top_k = op.find_element(By.CSS_SELECTOR, "tr[data-property-name='top_k'] input")
    assert top_k.get_attribute("value") == ""
    op.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(clip))
    assert execute(browser, op, "/classify") == "200"
    body = op.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description"
                           " .microlight").text
    assert body.count('"label"') == 3, body
