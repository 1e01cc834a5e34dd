"""Tools a test needs from the machine (wrk, docker compose, Chromium and its driver) and
optional Python packages (the extras, the chattts package): where one is missing the test
skips and says what to install, except under CI (`CI` set, as CI services do), which
installs them all (.ci/run, `make test`): there a missing one FAILS the test, so a green
CI run means every such test ran.

    wrk = require_tool("wrk", "apt-get install wrk")
    ray_serve = require_module("ray.serve", "the `cluster` extra: pip install -e '.[cluster]'")
"""

from __future__ import annotations

import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip with `what` (what is missing and how to install it); fail instead under CI."""
    if under_ci():
        pytest.fail(f"{what}; CI installs it (.ci/run), so its absence is a failure",
                    pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require_tool(name: str, install: str) -> str:
    """The path of executable `name` on PATH, or `missing(...)` naming `install`."""
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}` is not installed ({install})")
    return path


def require_module(name: str, install: str) -> ModuleType:
    """Module `name`, imported, or `missing(...)` naming `install`."""
    try:
        return pytest.importorskip(name)
    except pytest.skip.Exception:
        missing(f"{name} is not installed ({install})")
