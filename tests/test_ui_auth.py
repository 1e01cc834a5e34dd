"""The page against a server that needs an API key, takes small uploads only and one CLAP
request at a time: it asks for the key on the first 401, keeps it in sessionStorage, sends
it as a Bearer token, asks again when the key is refused; a 413 and a 503 show the
server's message (and when to retry)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clap_fixtures import make_clip, wav_bytes
from tests.tts_server import RunningServer, serve_app
from tests.ui_browser import Browser, chromium, require_browser

pytest_plugins = ("tests.clap_fixtures",)

KEY = "ui-test-key"
MAX_UPLOAD = 200_000  # 1 s of float WAV at 48 kHz fits, 3 s does not


@pytest.fixture(scope="module")
def server(clap_models_dir: Path) -> Iterator[RunningServer]:
    require_browser()
    with serve_app(models_dir=clap_models_dir, models="clap", api_key=KEY, warmup=False,
                   max_upload_bytes=MAX_UPLOAD, max_in_flight=1) as s:
        yield s


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def dialog_open(browser: Browser) -> bool:
    return bool(browser.js("return document.getElementById('key-dialog').open"))


def give_key(browser: Browser, key: str) -> None:
    browser.wait(lambda d: dialog_open(browser), 20, "the API-key dialog")
    field = browser.by_id("key-input")
    field.clear()
    field.send_keys(key)
    browser.by_id("key-ok").click()


def test_page_asks_for_the_key_then_works(browser: Browser, server: RunningServer,
                                          tmp_path: Path) -> None:
    assert httpx.get(server.url + "/").status_code == 200  # the page itself is open
    assert httpx.get(server.url + "/v1/models").status_code == 401
    clip = tmp_path / "one-second.wav"
    clip.write_bytes(wav_bytes(make_clip(1.0, seed=4)))
    assert clip.stat().st_size < MAX_UPLOAD

    browser.driver.get(server.url + "/#classify")
    browser.wait(lambda d: dialog_open(browser), 20, "the API-key dialog")
    browser.screenshot("key-dialog")
    give_key(browser, "not-the-key")
    browser.wait(lambda d: browser.visible("key-error"), 20, "the refusal")
    assert "refused" in browser.by_id("key-error").text
    give_key(browser, KEY)
    browser.wait(lambda d: not dialog_open(browser), 20, "the dialog to close")
    # the page stores the key in the dialog's `close` event, a task queued after `open`
    # turns false: wait for it rather than read in between
    browser.wait(lambda d: browser.js("return sessionStorage.getItem('audioserve.apiKey')")
                 == KEY, 20, "the key stored")
    browser.wait(lambda d: browser.visible("demo-banner"), 20, "/v1/models read with the key")

    browser.by_id("classify-file").send_keys(str(clip))
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-result"), 60, "scores")
    assert not dialog_open(browser)  # the stored key was sent; no second prompt
    assert browser.js("return document.querySelectorAll('#classify-bars .bar-row').length") == 6
    problems = browser.problems(allowed_statuses=(401,))
    assert not problems, problems


def test_too_large_upload_shows_the_413_message(browser: Browser, server: RunningServer,
                                                tmp_path: Path) -> None:
    clip = tmp_path / "three-seconds.wav"
    clip.write_bytes(wav_bytes(make_clip(3.0, seed=5)))  # over the limit, under the body cap
    browser.driver.get(server.url + "/#classify")
    give_key(browser, KEY)
    browser.by_id("classify-file").send_keys(str(clip))
    browser.by_id("classify-run").click()
    browser.wait(lambda d: browser.visible("classify-error"), 30, "the 413 message")
    api = httpx.post(server.url + "/classify", headers={"Authorization": f"Bearer {KEY}"},
                     data={"labels": "dog"}, files={"file": ("a.wav", clip.read_bytes())})
    assert api.status_code == 413

    def sizeless(message: str) -> str:  # the browser's form has other boundaries
        return re.sub(r"request body is \d+ bytes, ", "", message)

    assert sizeless(browser.by_id("classify-error").text) == \
        sizeless(f"413 payload_too_large: {api.json()['error']['message']}")
    problems = browser.problems(allowed_statuses=(401, 413))
    assert not problems, problems


def test_overload_shows_the_503_message_and_retry_after(
        browser: Browser, server: RunningServer, tmp_path: Path) -> None:
    clip = tmp_path / "one-second.wav"
    clip.write_bytes(wav_bytes(make_clip(1.0, seed=6)))
    browser.driver.get(server.url + "/#classify")
    give_key(browser, KEY)
    browser.by_id("classify-file").send_keys(str(clip))
    # another request holds CLAP's one in-flight slot, through the gate's own API (a slow
    # upload no longer can: bodies are read before a request takes its slot)
    gate = server.app.state.admission["clap"]
    taken, release = threading.Event(), threading.Event()

    async def hold_slot() -> None:
        async with gate.admit():
            taken.set()
            await asyncio.to_thread(release.wait, 60)

    holder = threading.Thread(target=asyncio.run, args=(hold_slot(),), daemon=True)
    holder.start()
    try:
        assert taken.wait(10) and gate.in_flight == 1
        browser.by_id("classify-run").click()
        browser.wait(lambda d: browser.visible("classify-error"), 30, "the 503 message")
    finally:
        release.set()
        holder.join(10)
    shown = browser.by_id("classify-error").text
    assert shown.startswith("503 overloaded: ")
    assert re.search(r" \(Retry-After: [1-9]\d* s\)$", shown), shown
    browser.screenshot("classify-error-503")
    problems = browser.problems(allowed_statuses=(401, 503))
    assert not problems, problems
