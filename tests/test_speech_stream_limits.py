"""WS /v1/audio/speech/stream under bad and hostile clients, over a real socket: the API
key and origins (as the live-analysis socket), bad messages, every limit (sessions,
message size, text per utterance and per session, config and idle time, pending
sentences and utterances, a client that stops reading) -> an `error` event and its close
code, never a crash."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from service.live.protocol import PROTOCOL
from service.live.speech_session import Utterance
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.conftest import wait_until
from tests.test_speech_stream import CONFIG, assert_same_pcm, read_utterance, speak, ws_url
from tests.tts_server import RunningServer, serve_app

KEY = "s3cret-key"
ORIGIN = "https://app.example"
AUTH = {"additional_headers": {"Authorization": f"Bearer {KEY}"}}


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, api_key=KEY, live_allowed_origins=ORIGIN,
                   tts_stream_chunk_tokens=8, tts_piece_max_chars=60,
                   tts_ws_max_sessions=2, tts_ws_max_utterance_chars=200,
                   tts_ws_max_session_chars=300, tts_ws_max_message_bytes=1024,
                   tts_ws_config_timeout_s=1.0, tts_ws_idle_timeout_s=1.0,
                   tts_ws_max_pending_sentences=2, tts_ws_max_pending_utterances=2) as s:
        yield s


def refused(ws: ClientConnection) -> tuple[dict[str, Any], int | None]:
    """The error event, then the close code."""
    while True:
        message = ws.recv(timeout=30)
        if isinstance(message, str) and json.loads(message)["type"] == "error":
            event = json.loads(message)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            return event, ws.close_code


def session(server: RunningServer, *messages: str | bytes) -> tuple[dict[str, Any], int | None]:
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        for m in messages:
            try:
                ws.send(m)
            except ConnectionClosed:  # closed by an error on an earlier message
                break
        return refused(ws)


def text(t: str) -> str:
    return json.dumps({"type": "input.text", "text": t})


DONE = json.dumps({"type": "input.done"})


def test_key_and_origin_are_checked_as_on_the_live_socket(server: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as no_key:
        connect(ws_url(server))
    assert no_key.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as bad_origin:
        connect(ws_url(server), origin="https://evil.example", **AUTH)  # type: ignore[arg-type]
    assert bad_origin.value.response.status_code == 403
    with connect(ws_url(server), origin=ORIGIN,  # type: ignore[arg-type]
                 subprotocols=[PROTOCOL, f"bearer.{KEY}"]) as ws:  # a browser's way
        assert ws.subprotocol == PROTOCOL
        ws.send(json.dumps(CONFIG))
        assert speak(ws, ["Allowed."]).events[-1]["type"] == "session.done"


@pytest.mark.parametrize(("messages", "code", "close"), [
    ([text("hi")], "invalid_message", 4400),  # config must come first
    (["{not json"], "invalid_message", 4400),
    ([json.dumps({"type": "audio.start"})], "invalid_message", 4400),
    ([json.dumps({**CONFIG, "surprise": 1})], "invalid_message", 4400),
    ([b"\x00\x01"], "invalid_message", 4400),
    ([json.dumps({**CONFIG, "voice": "nobody-knows-me"})], "invalid_config", 4400),
    ([json.dumps({**CONFIG, "model": "whisper-1"})], "invalid_config", 4400),
    ([json.dumps(CONFIG), text("half a sentence"), json.dumps(CONFIG)],
     "invalid_message", 4400),  # a config inside an utterance
    ([json.dumps({**CONFIG, "speed": float("nan")})], "invalid_message", 4400),
    ([json.dumps(CONFIG), text("a lone \ud800 surrogate.")], "invalid_message", 4400),
    ([json.dumps(CONFIG), text("x" * 2000)], "message_too_large", 1009),
    ([json.dumps(CONFIG), *[text("word " * 30)] * 2], "text_too_long", 1009),
])
def test_bad_messages_get_an_error_and_a_close_code(
        server: RunningServer, messages: list[str | bytes], code: str, close: int) -> None:
    event, close_code = session(server, *messages)
    assert event["code"] == code, event
    if "NaN" in str(messages[0]):
        assert "speed: Input should be a finite number" in event["message"], event
    if "\\ud800" in str(messages[-1]):  # said as the HTTP routes say it, field named
        assert event["message"].startswith("text holds a lone UTF-16 surrogate"), event
    assert close_code == close
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_session_text_is_bounded_across_utterances(server: RunningServer) -> None:
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({**CONFIG, "max_new_tokens": 4}))
        for _ in range(2):
            speak(ws, ["a sentence of some length, " * 5])
        ws.send(text("a sentence of some length, " * 5))
        event, close = refused(ws)
    assert event["code"] == "text_too_long" and "SESSION_CHARS" in event["message"]
    assert close == 1009


def test_config_and_idle_time_are_bounded(server: RunningServer) -> None:
    assert session(server)[0]["code"] == "config_timeout"
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({**CONFIG, "max_new_tokens": 4}))
        speak(ws, ["Done, then quiet."])
        event, close = refused(ws)
    assert event["code"] == "idle_timeout" and close == 1008
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps(CONFIG))
        ws.send(text("half a sentence, then nothing"))  # an open utterance, no sentence
        event, close = refused(ws)
    assert event["code"] == "idle_timeout" and close == 1008


def test_sessions_are_counted(server: RunningServer) -> None:
    with connect(ws_url(server), **AUTH) as a, \
            connect(ws_url(server), **AUTH) as b:  # type: ignore[arg-type]
        for ws in (a, b):
            ws.send(json.dumps(CONFIG))
        event, close = session(server)
        assert event["code"] == "too_many_sessions" and close == 1013
        assert speak(a, ["Still served."]).events[-1]["type"] == "session.done"


def test_pending_sentences_wait_as_text_and_all_arrive(server: RunningServer) -> None:
    sentences = [f"Sentence {i}." for i in range(6)]
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({**CONFIG, "max_new_tokens": 8}))
        u = speak(ws, [" ".join(sentences)])
    assert [e["sentence_text"] for e in u.events if e["type"] == "audio.start"] == sentences


def test_utterances_sent_ahead_share_the_pending_sentences_in_order(
        server: RunningServer) -> None:
    """Three utterances of five sentences sent before reading, two pending sentences
    allowed: a later utterance's feeder taking the room while an earlier one still had
    sentences to give left the earlier one waiting forever (the session hung)."""
    texts = [[f"U{u} part {i}." for i in range(5)] for u in range(3)]
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({**CONFIG, "max_new_tokens": 8}))
        for sentences in texts:
            ws.send(text(" ".join(sentences)))
            ws.send(DONE)
        got = [read_utterance(ws).events for _ in texts]
    for sentences, events in zip(texts, got, strict=True):
        assert events[-1]["type"] == "session.done", events[-1]
        assert [e["sentence_text"] for e in events if e["type"] == "audio.start"] == sentences


def test_a_client_that_stops_reading_loses_its_generation(
        chattts_models_dir: Path) -> None:  # noqa: F811
    with serve_app(send_buffer_bytes=8192, models_dir=chattts_models_dir, models="chattts",
                   intra_op_threads=1, warmup=False, tts_stream_chunk_tokens=8,
                   tts_stream_buffer_tokens=16, tts_stream_stall_timeout_s=1.0) as server:
        engine = server.app.state.pipelines["chattts"].engine
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.connect((server.host, server.port))
        with connect(ws_url(server), sock=sock, max_queue=1) as ws:
            ws.send(json.dumps({**CONFIG, "max_new_tokens": 2000}))
            ws.send(text("A long sentence that will not be read. " * 8))
            ws.send(json.dumps({"type": "input.done"}))
            closed = server.app.state.metrics.tts_ws_closed
            deadline = time.monotonic() + 60
            while (closed.labels("slow_reader")._value.get() < 1
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            assert closed.labels("slow_reader")._value.get() == 1
            while engine.active and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.active == 0  # its sequences are gone, not generated to the end
            stats = engine.stats()
            assert stats.paused + stats.aborted >= 1
        with connect(ws_url(server)) as ws:  # the server serves the next one
            ws.send(json.dumps({**CONFIG, "max_new_tokens": 4}))
            assert read_utterance_after(ws)


def read_utterance_after(ws: ClientConnection) -> bool:
    ws.send(text("Next."))
    ws.send(json.dumps({"type": "input.done"}))
    return read_utterance(ws).events[-1]["type"] == "session.done"


def test_an_utterance_over_the_output_cap_says_where_its_audio_stops(
        chattts_models_dir: Path) -> None:  # noqa: F811
    """AUDIOSERVE_TTS_MAX_OUTPUT_S on the socket: the audio stops where `/tts` cuts the same
    text (the same PCM, also streamed over HTTP: a piece generated beside the one before it
    sent 4 tokens past the cut before), and `session.done` says so instead of looking
    complete."""
    text_ = "One sentence here. Then a second. And a third one. A fourth to be sure."
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, tts_stream_chunk_tokens=8, tts_max_output_s=1.5) as server:
        cap = {**CONFIG, "min_new_tokens": CONFIG["max_new_tokens"]}  # 40 tokens: 0.85 s each
        with connect(ws_url(server)) as ws:
            ws.send(json.dumps(cap))
            capped = speak(ws, [text_])
            ws.send(json.dumps({"type": "input.text", "text": "Short."}))
            ws.send(json.dumps({"type": "input.done"}))
            whole = read_utterance(ws)
        body = {"text": text_, "voice": "alloy", "sampling_seed": 7, "format": "pcm",
                "max_new_tokens": 40, "min_new_tokens": 40, "split": "sentence"}
        one_shot = httpx.post(server.url + "/tts", timeout=120, json=body)
        streamed = httpx.post(server.url + "/tts", timeout=120, json={**body, "stream": True})
    done = capped.events[-1]
    assert done["type"] == "session.done" and done["truncated_at_s"] == 1.5, done
    assert done["total_sentences"] == 4
    spoken = [e["sentence_index"] for e in capped.events if e["type"] == "audio.start"]
    assert spoken == [0, 1], spoken  # 0.85 s each: the second reaches the cap
    assert one_shot.headers["X-Audioserve-Truncated-At-S"] == "1.5"
    assert_same_pcm(bytes(capped.audio), one_shot.content, "capped utterance")
    assert_same_pcm(streamed.content, one_shot.content, "capped HTTP stream")
    assert whole.events[-1]["type"] == "session.done"
    assert "truncated_at_s" not in whole.events[-1]  # only an utterance that was cut


def test_a_session_that_ends_mid_utterance_leaves_no_task_behind(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """The sender waits for the utterance's stream and for a cancel at once; when the
    session ends under it (here: a config inside an utterance), both waits are cancelled,
    not left for the garbage collector to find pending (`Task was destroyed...`)."""
    for _ in range(5):
        event, code = session(server, json.dumps(CONFIG), text("Hello there. And more"),
                              json.dumps(CONFIG))
        assert event["code"] == "invalid_message" and code == 4400, (event, code)
    gc.collect()
    leaked = [r.getMessage() for r in caplog.records if "destroyed but it is pending"
              in r.getMessage()]
    assert not leaked, leaked[:2]


def live_utterances() -> int:
    """Utterance objects alive in this process (the server runs in it), garbage freed."""
    gc.collect()
    return sum(isinstance(o, Utterance) for o in gc.get_objects())


def test_empty_utterances_each_get_their_session_done_in_order(server: RunningServer) -> None:
    """More utterances than TTS_WS_MAX_PENDING_UTTERANCES (2 here) sent at once, read
    normally: each is answered, in order, and none is lost to the back-pressure."""
    n = 40
    with connect(ws_url(server), **AUTH) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps(CONFIG))
        for _ in range(n):
            ws.send(DONE)
        events = [read_utterance(ws).events for _ in range(n)]
        ws.send(json.dumps({"type": "session.close"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
    assert all(len(e) == 1 and e[0]["type"] == "session.done" for e in events), events[:3]
    assert [e[0]["utterance_index"] for e in events] == list(range(n))
    assert [e[0]["total_sentences"] for e in events] == [0] * n
    assert ws.close_code == 1000
    metrics = server.app.state.metrics
    wait_until(lambda: metrics.tts_ws_sessions._value.get() == 0, "the session closed")
    assert metrics.tts_ws_utterances._value.get() == 0


LIMIT = 4


@pytest.fixture(scope="module")
def backlog_server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    """A server with the default idle time (a client may be quiet while the test looks),
    a small send buffer and short stall and close times (a client that does not read
    shows at once) and TTS_WS_MAX_PENDING_UTTERANCES=LIMIT."""
    with serve_app(send_buffer_bytes=8192, models_dir=chattts_models_dir, models="chattts",
                   intra_op_threads=1, warmup=False, tts_stream_stall_timeout_s=1.0,
                   live_close_timeout_s=0.5, write_timeout_s=1.0,
                   tts_ws_max_pending_utterances=LIMIT) as s:
        yield s


def test_a_long_session_releases_each_finished_utterance(
        backlog_server: RunningServer) -> None:
    """An utterance's task, queue, events and stream go once it is sent: a session of many
    utterances holds none of them once all are answered."""
    metrics = backlog_server.app.state.metrics
    with connect(ws_url(backlog_server)) as ws:
        ws.send(json.dumps({**CONFIG, "max_new_tokens": 4}))
        for i in range(12):
            assert speak(ws, [f"Number {i}."]).events[-1]["type"] == "session.done"
            ws.send(DONE)  # and an empty one
            assert read_utterance(ws).events[-1]["type"] == "session.done"
        wait_until(lambda: live_utterances() == 0, "the finished utterances freed")
        assert metrics.tts_ws_sessions._value.get() == 1  # the session is still open
        assert metrics.tts_ws_utterances._value.get() == 0
        assert speak(ws, ["Still speaking."]).events[-1]["type"] == "session.done"


def test_a_client_that_sends_utterances_without_reading_is_held_to_the_limit(
        backlog_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input.done flood (27 bytes, an utterance each, never reading the answers): a
    session with TTS_WS_MAX_PENDING_UTTERANCES utterances begun and unfinished reads no
    more, so the flood stalls itself on its own unread `session.done` events and the
    stall timeout ends it (slow_reader, not idle_timeout), while the server holds at
    most the limit and answers others."""
    server = backlog_server
    metrics = server.app.state.metrics
    gauge, closed = metrics.tts_ws_utterances, metrics.tts_ws_closed
    stalled = closed.labels("slow_reader")._value.get()
    idle = closed.labels("idle_timeout")._value.get()
    peak = [0.0]
    inc = gauge.inc

    def counted(amount: float = 1) -> None:  # the server's own count, at every rise
        inc(amount)
        peak[0] = max(peak[0], gauge._value.get())

    monkeypatch.setattr(gauge, "inc", counted)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    sock.connect((server.host, server.port))
    sent = [0]
    with connect(ws_url(server), sock=sock, max_queue=1) as ws:
        ws.send(json.dumps(CONFIG))

        def flood() -> None:
            for _ in range(5000):
                try:
                    ws.send(DONE)
                except (ConnectionClosed, OSError):  # cut off: the point
                    return
                sent[0] += 1

        flooding = threading.Thread(target=flood, daemon=True)
        flooding.start()
        wait_until(lambda: peak[0] >= LIMIT, "the backlog reached the limit")
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        wait_until(lambda: closed.labels("slow_reader")._value.get() == stalled + 1,
                   "the stall timeout ended the session")
        wait_until(lambda: metrics.tts_ws_sessions._value.get() == 0, "session gone")
        flooding.join(timeout=60)
        assert not flooding.is_alive()
        answered = 0
        with pytest.raises(ConnectionClosed):  # reading again: what was sent, then cut
            while True:
                message = ws.recv(timeout=30)
                answered += isinstance(message, str) and '"session.done"' in message
        assert ws.close_code in (1006, 1008), ws.close_code  # documented: slow_reader
    assert answered < sent[0], (answered, sent[0])  # cut off, not served to the end
    assert peak[0] == LIMIT, (peak[0], sent[0])
    assert gauge._value.get() == 0
    assert closed.labels("idle_timeout")._value.get() == idle
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
