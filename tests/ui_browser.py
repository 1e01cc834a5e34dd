"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for the
page's tests: `with chromium(tmp_path) as browser: browser.driver.get(url)`.

The browser runs offline: every host name resolves to nothing, so a page that fetched a
script, font or style from anywhere but the server under test would fail visibly. The
flags that stop Chromium's own background traffic are needed here: without them this
machine's closed network refuses its connections many at a time. The microphone is
Chromium's fake capture device, playing a WAV file the test made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.tools import missing, require_tool

SCREENSHOTS_ENV = "AUDIOSERVE_TEST_SCREENSHOTS"
"""A folder for the screenshots, for a person to look at; unset, they go to pytest's
temporary folder of the run (`screenshots/` in it), never into the checkout."""
LOCAL_NAME = "audioserve.test"
"""A host name for 127.0.0.1, for pages that behave differently on `localhost`."""
OFFLINE_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    f"--host-resolver-rules=MAP {LOCAL_NAME} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)


def require_browser() -> tuple[Any, str, str]:
    """Selenium's webdriver module and the paths of chromium and chromedriver, or a skip
    (a failure under CI, which installs them: tests/tools.py)."""
    chromium_path = require_tool("chromium", "apt-get install chromium")
    driver_path = require_tool("chromedriver", "apt-get install chromium-driver")
    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    return webdriver, chromium_path, driver_path


def problems_in(entries: list[dict[str, Any]], allowed_statuses: tuple[int, ...] = (),
                allowed_messages: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Console errors and warnings, except the network lines of an expected HTTP status
    (the browser logs every non-2xx response it fetched, answered or not) and messages
    holding one of `allowed_messages`."""
    out = []
    for entry in entries:
        if entry["level"] not in ("SEVERE", "WARNING"):
            continue
        message = entry["message"]
        if entry.get("source") == "network" and any(
                f"status of {status} " in message for status in allowed_statuses):
            continue
        if not any(allowed in message for allowed in allowed_messages):
            out.append(entry)
    return out


@dataclass
class Browser:
    driver: Any
    screenshots: Path
    seen_logs: list[dict[str, Any]] = field(default_factory=list)

    def logs(self) -> list[dict[str, Any]]:
        """Console and network entries since the last call (read from Chromium's log)."""
        fresh = self.driver.get_log("browser")
        self.seen_logs.extend(fresh)
        return list(fresh)

    def problems(self, allowed_statuses: tuple[int, ...] = ()) -> list[dict[str, Any]]:
        """The console's errors and warnings since the last read (see `problems_in`)."""
        return problems_in(self.logs(), allowed_statuses)

    def wait(self, condition: Callable[[Any], Any], timeout_s: float = 60, what: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.1).until(condition)
        except Exception as exc:
            self.screenshot("failed-wait")
            raise AssertionError(f"timed out waiting for {what or condition}; "
                                 f"console: {self.seen_logs + self.logs()}") from exc

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def by_id(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> bool:
        return bool(self.js("const e = document.getElementById(arguments[0]);"
                            "return !!e && e.checkVisibility();", element_id))

    def screenshot(self, name: str) -> Path:
        """A full-page PNG in `screenshots` (see SCREENSHOTS_ENV), for a person to look at."""
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / f"{name}.png"
        width = self.js("return document.documentElement.clientWidth")
        height = self.js("return Math.max(document.documentElement.scrollHeight, innerHeight)")
        current = self.driver.get_window_size()
        self.driver.set_window_size(current["width"], min(int(height) + 140, 4000))
        time.sleep(0.2)
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(current["width"], current["height"])
        assert width > 0
        return path


@contextmanager
def chromium(profile_dir: Path, *, fake_mic_wav: Path | None = None,
             width: int = 1280, height: int = 1000) -> Iterator[Browser]:
    """Chromium with its profile in `profile_dir` (`tmp_path_factory.mktemp(...)`): the
    screenshots go to `screenshots/` beside it, in the run's temporary folder, unless
    SCREENSHOTS_ENV names a folder."""
    webdriver, chromium_path, driver_path = require_browser()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for flag in OFFLINE_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    if fake_mic_wav is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_mic_wav}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    screenshots = Path(os.environ.get(SCREENSHOTS_ENV) or profile_dir.parent / "screenshots")
    try:
        yield Browser(driver, screenshots)
    finally:
        driver.quit()
