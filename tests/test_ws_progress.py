"""Both WebSockets, over a real socket: a session is kept open by progress, not by
messages. Messages that change nothing (empty audio frames; a config again, a cancel with
nothing to cancel, empty text) do not reset the idle timer, and a client that makes a
little progress now and then is idle too: a live stream that falls behind real time, a
speech session whose text waits unspoken; any speech session meets TTS_WS_MAX_SESSION_S.
Each client below keeps sending until the server ends it; on code that counted any
message as activity none would ever end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.chattts_fixtures import chattts_models_dir  # noqa: F401  (fixtures)
from tests.clap_fixtures import clap_models_dir  # noqa: F401
from tests.conftest import packs_dir
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import LABELS, open_stream
from tests.tts_server import RunningServer, serve_app

IDLE_S = 1.0
CAP_S = 4.0
EVERY_S = 0.2
"""How often the clients below send: several times within every idle period."""


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, emotion_models_dir: Path,  # noqa: F811
           chattts_models_dir: Path, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
           ) -> Iterator[RunningServer]:
    root = packs_dir(tmp_path_factory, "progress_models", clap=clap_models_dir,
                     emotion2vec=emotion_models_dir, chattts=chattts_models_dir)
    with serve_app(models_dir=root, intra_op_threads=1, warmup=False,
                   live_idle_timeout_s=IDLE_S, live_max_stream_seconds=CAP_S,
                   tts_ws_idle_timeout_s=IDLE_S, tts_ws_max_session_s=CAP_S) as s:
        yield s


def _ended_by_server(ws: ClientConnection, keep_sending: Callable[[int], str | bytes]
                     ) -> tuple[dict[str, Any], int | None, int]:
    """Send `keep_sending(i)` every EVERY_S until the server closes; its error event, the
    close code and how many messages were sent. Fails if nothing ends the session."""
    stop = threading.Event()
    sent = 0

    def sender() -> None:
        nonlocal sent
        while not stop.wait(EVERY_S):
            try:
                ws.send(keep_sending(sent))
            except ConnectionClosed:
                return
            sent += 1

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    error: dict[str, Any] | None = None
    try:
        while True:
            message = ws.recv(timeout=CAP_S + 20)  # TimeoutError: nothing ended it
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                error = json.loads(message)
    except ConnectionClosed:
        pass
    finally:
        stop.set()
        thread.join()
    assert error is not None
    received = ws.protocol.close_rcvd
    return error, None if received is None else received.code, sent


def _live(server: RunningServer) -> ClientConnection:
    ws = open_stream(server)
    ws.send(json.dumps({"type": "session.config",
                        "input": {"format": "pcm_s16le", "sample_rate": 16000},
                        "classify": {"labels": LABELS}}))
    assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
    return ws


def _speech(server: RunningServer) -> ClientConnection:
    ws = connect(f"ws://{server.host}:{server.port}/v1/audio/speech/stream",
                 open_timeout=30, close_timeout=30)
    ws.send(json.dumps({"type": "session.config", "voice": "alloy", "seed": 7,
                        "response_format": "pcm"}))
    return ws


def test_live_empty_frames_are_not_audio(server: RunningServer) -> None:
    with _live(server) as ws:
        error, close, sent = _ended_by_server(ws, lambda i: b"")
    assert (error["code"], close) == ("idle_timeout", 1008)
    assert "empty frames bring none" in error["message"]
    assert sent >= 2  # they kept coming within the idle time


def test_live_a_trickle_of_audio_falls_behind_real_time(server: RunningServer) -> None:
    """One sample per message: audio, but far less than the time waited for it."""
    with _live(server) as ws:
        error, close, sent = _ended_by_server(ws, lambda i: b"\x01\x00")
    assert (error["code"], close) == ("idle_timeout", 1008)
    assert "behind real time" in error["message"]
    assert sent >= 2


def test_live_audio_sent_ahead_buys_its_time(server: RunningServer) -> None:
    """2 s of audio at once, then only empty frames: the stream is behind real time only
    once those 2 s have passed, so it ends no sooner than 2 s + the idle time."""
    with _live(server) as ws:
        started = time.monotonic()
        ws.send(b"\x00\x00" * 16000 * 2)
        error, close, _ = _ended_by_server(ws, lambda i: b"")
        elapsed = time.monotonic() - started
    assert (error["code"], close) == ("idle_timeout", 1008)
    assert elapsed >= 2 + IDLE_S


@pytest.mark.parametrize("message", [
    {"type": "session.config", "voice": "alloy", "seed": 7, "response_format": "pcm"},
    {"type": "input.cancel"},
    {"type": "input.text", "text": ""},
])
def test_speech_messages_that_change_nothing_are_not_progress(
        server: RunningServer, message: dict[str, Any]) -> None:
    with _speech(server) as ws:
        error, close, sent = _ended_by_server(ws, lambda i: json.dumps(message))
    assert (error["code"], close) == ("idle_timeout", 1008)
    assert sent >= 2


def test_speech_a_trickle_of_unfinished_text_is_idle(server: RunningServer) -> None:
    """A word now and then with no sentence end: progress, but nothing to speak."""
    with _speech(server) as ws:
        error, close, sent = _ended_by_server(
            ws, lambda i: json.dumps({"type": "input.text", "text": "word "}))
    assert (error["code"], close) == ("idle_timeout", 1008)
    assert "unspoken" in error["message"] and "input.done" in error["message"]
    assert sent >= 2


def test_speech_sessions_meet_the_session_cap(server: RunningServer) -> None:
    """Sentences, each spoken, and then the next: never idle, still capped."""
    with _speech(server) as ws:
        error, close, sent = _ended_by_server(
            ws, lambda i: json.dumps({"type": "input.text", "text": "Hi. "}))
    assert (error["code"], close) == ("session_too_long", 1008)
    assert "AUDIOSERVE_TTS_WS_MAX_SESSION_S" in error["message"]
    assert sent >= 2
