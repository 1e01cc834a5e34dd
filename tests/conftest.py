"""Shared fixtures: the real app with chosen settings, and the shared data folder."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests import openapi_contract

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.slow` tests (real-size exports) run only with AUDIOSERVE_SLOW_TESTS=1."""
    if os.environ.get("AUDIOSERVE_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set AUDIOSERVE_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _answers_match_the_openapi() -> Iterator[None]:
    """Every answer of every app in the suite is checked against its route's OpenAPI
    (tests/openapi_contract.py); a test that saw a mismatch fails in its teardown."""
    with openapi_contract.checking():
        yield


@pytest.fixture(autouse=True)
def _no_openapi_drift() -> Iterator[None]:
    openapi_contract.check_pending()
    openapi_contract.violations.clear()
    yield
    found = openapi_contract.check_pending()
    openapi_contract.violations.clear()
    assert not found, ("answers, or requests taken, that the OpenAPI does not document:\n"
                       + "\n".join(found))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repo; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def packs_dir(factory: pytest.TempPathFactory, name: str, **exports: Path) -> Path:
    """A fresh models dir linking one pack per keyword (`clap=clap_models_dir`: the
    session's export holding a `clap` pack), so a module serves just the models it names
    without touching another fixture's dir."""
    root = factory.mktemp(name)
    for kind, models_dir in exports.items():
        (root / kind).symlink_to(models_dir / kind)
    return root


@contextmanager
def running_app(**overrides: Any) -> Iterator[TestClient]:
    """The real app through its lifespan, packs loaded before the first request."""
    settings = Settings(_env_file=None, load_in_background=False, **overrides)
    with TestClient(create_app(settings)) as client:
        yield client


HANG_S = 60.0
"""How long a test waits for something that should happen at once before it calls it a
hang. Generous on purpose: a test's outcome must not depend on how fast or busy the machine
is (bench/ measures and reports speed; tests order by events and only guard against hangs)."""


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = HANG_S,
               interval_s: float = 0.01) -> float:
    """Poll `condition` until it is true; the seconds that took. An AssertionError naming
    `what` after `timeout_s` (a hang guard, not a speed limit)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


def wait_ready(client: TestClient, timeout_s: float = HANG_S) -> None:
    try:
        wait_until(lambda: client.get("/readyz").status_code == 200, "ready", timeout_s, 0.05)
    except AssertionError:
        raise AssertionError(f"not ready after {timeout_s} s: {client.get('/readyz').json()}"
                             ) from None


@pytest.fixture
def app_client() -> Callable[..., Any]:
    """`with app_client(models_dir=...) as client:` — the real app with settings overrides."""
    return running_app
