"""docs/live-analysis.md's Python client, as written, against a live server: a stream that
ends well, and one the server closes with an error (it must say so, not crash)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import live_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app

MAX_STREAM_S = 2.0


@pytest.fixture(scope="module")
def server(live_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=live_models_dir, live_max_stream_seconds=MAX_STREAM_S) as s:
        yield s


def _client(server: RunningServer) -> dict[str, Any]:
    doc = (Path(__file__).parents[1] / "docs" / "live-analysis.md").read_text()
    code = doc.split("## A Python client")[1].split("```python\n")[1].split("```")[0]
    code = code.replace("ws://localhost:8000", f"ws://{server.host}:{server.port}")
    namespace: dict[str, Any] = {"__name__": "doc"}  # not __main__: main() is called here
    exec(compile(code, "live-analysis.md", "exec"), namespace)
    return namespace


def _wav(path: Path, seconds: float, rate: int = 16000) -> str:
    t = np.arange(round(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")
    return str(path)


def test_a_stream_that_ends_well(server: RunningServer, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    main = _client(server)["main"]
    assert asyncio.run(main(_wav(tmp_path / "a.wav", 1.5))) == 0
    printed = capsys.readouterr()
    assert "'type': 'session.done'" in printed.out and printed.err == ""


def test_a_stream_the_server_cuts_is_said_not_a_traceback(
        server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _client(server)["main"]
    assert asyncio.run(main(_wav(tmp_path / "long.wav", MAX_STREAM_S + 1))) == 1
    printed = capsys.readouterr()
    assert "'code': 'stream_too_long'" in printed.out
    assert printed.err.startswith("closed 1008 ") and "Traceback" not in printed.err
