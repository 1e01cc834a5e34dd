"""The hostile corpus (bench/hostile.py) through the real app over a real socket: every
case gets one of its expected statuses (a clear 4xx, or a valid 2xx), as JSON naming the
problem, while /healthz keeps answering (the guard), and the connection, when the server
keeps it, still serves.

How fast is the benchmark's to measure, not a test's to assert: `python -m
bench.bench_hostile` reports each case's answer time against the 1 s target and /healthz's
worst against 100 ms. Here a hang fails (no answer within send_case's 30 s socket timeout
reads as status 0, which no case expects; /healthz stuck for HANG_S), a slow machine does
not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.healthz_guard import healthz_guard
from bench.hostile import Case, send_case
from bench.hostile_corpus import corpus
from tests.conftest import packs_dir
from tests.tts_server import RunningServer, serve_app

pytest_plugins = ("tests.clap_fixtures", "tests.emotion2vec_fixtures")

CASES = corpus()
KEY = "hostile-test-key"


@pytest.fixture(scope="module")
def models_dir(clap_models_dir: Path, emotion_models_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = packs_dir(tmp_path_factory, "hostile_models", clap=clap_models_dir,
                     emotion2vec=emotion_models_dir)
    return root


@pytest.fixture(scope="module")
def open_server(models_dir: Path) -> Iterator[RunningServer]:
    with serve_app(models_dir=models_dir, warmup=False) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(models_dir: Path) -> Iterator[RunningServer]:
    with serve_app(models_dir=models_dir, models="clap", warmup=False, api_key=KEY) as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case_gets_its_answer(case: Case, open_server: RunningServer,
                                          keyed_server: RunningServer) -> None:
    server = keyed_server if case.api_key else open_server
    with healthz_guard(server.url):
        answer = send_case(server.host, server.port, case)
    assert answer.status in case.expect, (answer.status, f"after {answer.seconds:.1f} s",
                                          answer.body[:300])
    if answer.status >= 400:
        error = json.loads(answer.body)["error"]
        assert error["message"] and error.get("code"), error
    if answer.keep_alive_ok is not None:
        assert answer.keep_alive_ok, "the connection broke after the answer"


def test_the_corpus_covers_every_class() -> None:
    classes = {c.klass.split()[0] for c in CASES}
    assert {"1", "5", "7", "8", "9", "11"} <= classes
    for klass in classes:
        assert sum(c.klass.split()[0] == klass for c in CASES) >= 2, klass
