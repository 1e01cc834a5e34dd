"""The page's files as the app serves them (no browser): `/` and `/ui/*` with their
content types and CSP, every script module the page imports reachable, nothing that names
another host, `AUDIOSERVE_UI=false` turning the page off, and the files inside the wheel
(package data), so an installed service has its page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.routes.web import DOCS_ASSETS_PREFIX, STATIC_DIR, UI_PREFIX
from tests.conftest import running_app

REPO = Path(__file__).resolve().parents[1]
SRC_HREF = re.compile(r'(?:src|href)="(ui/[^"]+)"')
IMPORT = re.compile(r'^import .* from "\./([\w-]+\.js)";$', re.M)
URL = re.compile(r"https?://[^\s\"'`)<>]+")
XML_NAMESPACE = "http://www.w3.org/2000/svg"


def static_files() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


def test_page_and_every_file_it_loads_are_served(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none") as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp  # the page has no inline script or style
        wanted = SRC_HREF.findall(page.text)
        assert {"ui/app.css", "ui/js/main.js", "ui/icon.svg"} <= set(wanted)
        modules = ["main.js"]
        for name in modules:  # the module graph, from main.js
            r = client.get(f"{UI_PREFIX}/js/{name}")
            assert r.status_code == 200, name
            assert r.headers["content-type"].startswith("text/javascript"), name
            modules += [m for m in IMPORT.findall(r.text) if m not in modules]
        shipped = {p.name for p in (STATIC_DIR / "js").glob("*.js")}
        assert set(modules) == shipped  # every module is used, every import exists
        for path in wanted:
            assert client.get(f"/{path}").status_code == 200, path
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_no_static_file_names_another_host() -> None:
    for path in static_files():
        urls = [u for u in URL.findall(path.read_text()) if u != XML_NAMESPACE]
        assert not urls, f"{path.name}: {urls}"


def test_ui_false_turns_the_page_off(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none", ui=False) as client:
        page = client.get("/")
        assert page.status_code == 404
        assert page.json()["error"]["code"] == "not_found"
        assert client.get(f"{UI_PREFIX}/app.css").status_code == 404
        assert client.get("/docs").status_code == 200  # the API docs stay
        assert client.get(f"{DOCS_ASSETS_PREFIX}/swagger-ui.css").status_code == 200


def test_page_is_open_without_the_api_key(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none", api_key="k") as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/").status_code == 200
        assert client.get(f"{UI_PREFIX}/js/api.js").status_code == 200


def test_the_wheel_ships_the_page(tmp_path: Path) -> None:
    """Built from a clean copy of the sources (a stale build/ folder could hide a gap)."""
    pytest.importorskip("setuptools", minversion="69")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("service", "batcher", "export", "quant"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, timeout=600,
                   capture_output=True)
    wheel = next(tmp_path.glob("audioserve-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in static_files():
        assert f"service/{path.relative_to(STATIC_DIR.parent).as_posix()}" in names, path
