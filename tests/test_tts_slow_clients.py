"""Streaming clients that stop reading, and requests that cannot start in time (issue 13,
item 6), against the real app on a real socket while a guard samples /healthz.

A client that never reads: once the socket's buffers are full (~3 MB on loopback here),
its stream's bounded buffers fill, every sequence of it pauses (out of the batch, slot
free), a legitimate request runs at once meanwhile, and after the stall timeout the
generation is aborted and the connection closed mid-body. A client that reads slowly is
paused and resumed but gets every sample, equal to the one-shot audio. A request that
cannot get a decoding slot within REQUEST_TIMEOUT_S gets 504 (one-shot or streamed,
before any audio) and is never run.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.healthz_guard import healthz_guard
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app

STALL_S = 8.0
LONG_TEXT = "Some words to speak here, and then some more. " * 15  # 30 pieces
STALLED_BODY = {"text": LONG_TEXT, "seed": 5, "stream": True, "format": "pcm",
                "sample_rate": 48000}


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, tts_max_active=8, tts_stream_stall_timeout_s=STALL_S,
                   tts_stream_buffer_tokens=16, tts_stream_chunk_tokens=8,
                   tts_piece_max_chars=40, tts_max_text_chars=2000, tts_max_waiting=2000,
                   tts_max_paused=2000) as s:
        yield s


def _engine(server: RunningServer):  # type: ignore[no-untyped-def]
    return server.app.state.pipelines["chattts"].engine


def raw_request(server: RunningServer, path: str, body: dict[str, object]) -> socket.socket:
    """Send a POST on a fresh socket with a tiny receive buffer, and read nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_to_end(sock: socket.socket, timeout_s: float = 20.0) -> bytes:
    sock.settimeout(timeout_s)
    parts = []
    try:
        while chunk := sock.recv(1 << 16):
            parts.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    return b"".join(parts)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def short_tts(server: RunningServer) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    r = httpx.post(server.url + "/tts", json={"text": "hello there", "seed": 2,
                                              "max_new_tokens": 30, "format": "pcm"},
                   timeout=60)
    return r, time.perf_counter() - started


@pytest.mark.parametrize("route,speed", [("tts", 1.0), ("speech", 1.0), ("tts", 2.0),
                                         ("speech", 0.5)])
def test_clients_that_never_read_pause_then_are_cut_off(server: RunningServer, route: str,
                                                        speed: float) -> None:
    """At every speed (issue 21, item 7: a stretched piece used to be generated whole
    before any of it was sent, so it never paused). Speed 2 at 48 kHz fills the socket's
    buffers with as many tokens as speed 1 at 24 kHz."""
    engine = _engine(server)
    before = engine.stats()
    if route == "tts":
        socks = [raw_request(server, "/tts", {**STALLED_BODY, "seed": 5 + i, "speed": speed})
                 for i in range(2)]
    else:  # the OpenAI route streams by default; WAV at 48 kHz is what a user may ask
        socks = [raw_request(server, "/v1/audio/speech", {
            "model": "tts-1", "input": LONG_TEXT, "voice": "alloy", "response_format": "wav",
            "seed": i, "speed": speed}) for i in range(2)]
    s = engine.scheduler
    with healthz_guard(server.url):
        # every sequence of both streams ends up paused (or finished): nothing runs
        wait_for(lambda: s.num_paused > 0 and s.num_running == 0 and s.num_waiting == 0,
                 STALL_S - 1, "the stalled streams pause")
        assert engine.stats().aborted == before.aborted, "paused, not given up yet"
        # only the pieces started ahead are held, not all ~30 of each text
        assert s.num_paused <= 2 * 2
        r, took = short_tts(server)  # a legitimate request meanwhile: straight through
        assert r.status_code == 200 and took < 2.0, f"{r.status_code} after {took:.2f} s"
        held = server.connections
        # after the stall timeout: generation aborted, every slot and cache freed
        wait_for(lambda: engine.active == 0, STALL_S + 10, "the stalled streams end")
        # and the connections dropped, not left to drain the megabytes queued for them
        wait_for(lambda: server.connections <= held - len(socks), 5,
                 "the stalled connections are dropped")
    after = engine.stats()
    assert after.aborted - before.aborted >= s.num_paused + 2
    assert not engine._parked
    for sock in socks:
        data = read_to_end(sock)
        assert data.startswith(b"HTTP/1.1 200")
        assert not data.endswith(b"0\r\n\r\n"), "a cut stream must not look complete"
        assert len(data) < 8_000_000  # what was generated before the pause, not the text


def test_a_slow_reader_is_paused_but_gets_every_sample(server: RunningServer) -> None:
    """Reads ~1 MB/s (in 64 KB sips): slower than the engine generates, so its sequences
    pause and resume, but never slower than the stall timeout allows."""
    engine = _engine(server)
    text = "Some words to speak here, and then some more. " * 6
    body = {"text": text, "seed": 9, "format": "pcm", "sample_rate": 48000}
    whole = httpx.post(server.url + "/tts", json=body, timeout=120)
    assert whole.status_code == 200
    before = engine.stats()
    got = bytearray()
    with httpx.stream("POST", server.url + "/tts", json={**body, "stream": True},
                      timeout=120) as r:
        for chunk in r.iter_raw(1 << 16):
            got += chunk
            time.sleep(0.06)
    assert len(whole.content) > 3_000_000, "too short to fill the socket's buffers"
    assert engine.stats().paused > before.paused and engine.stats().aborted == before.aborted
    streamed = np.frombuffer(bytes(got), "<i2").astype(np.float32)
    one_shot = np.frombuffer(whole.content, "<i2").astype(np.float32)
    assert len(streamed) == len(one_shot)
    assert np.max(np.abs(streamed - one_shot)) <= 1e-3 * 32767 + 1


# -- deadlines: 504 when a request cannot start in time -------------------------------------


@pytest.fixture(scope="module")
def busy_server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, tts_max_active=1, request_timeout_s=1.0,
                   tts_piece_max_chars=40, tts_max_text_chars=2000) as s:
        yield s


def occupy(server: RunningServer) -> socket.socket:
    """A one-shot request that holds the only decoding slot for many seconds."""
    sock = raw_request(server, "/tts", {"text": LONG_TEXT, "seed": 5, "format": "pcm"})
    engine = _engine(server)
    wait_for(lambda: engine.scheduler.num_running == 1, 10, "the hog starts")
    return sock


@pytest.mark.parametrize("kind", ["tts", "tts-stream", "speech", "speech-stream"])
def test_a_request_that_cannot_start_in_time_gets_504(busy_server: RunningServer,
                                                      kind: str) -> None:
    engine = _engine(busy_server)
    hog = occupy(busy_server)
    before = engine.stats()
    try:
        with healthz_guard(busy_server.url):
            started = time.perf_counter()
            if kind.startswith("tts"):
                r = httpx.post(busy_server.url + "/tts", timeout=30, json={
                    "text": "hello", "seed": 1, "stream": kind.endswith("stream")})
            else:
                r = httpx.post(busy_server.url + "/v1/audio/speech", timeout=30, json={
                    "model": "tts-1", "input": "hello", "voice": "alloy",
                    "stream": kind.endswith("stream")})
            took = time.perf_counter() - started
        assert r.status_code == 504, r.text[:300]
        assert r.headers["content-type"].startswith("application/json")
        assert 0.9 < took < 3.0, took
        message = r.json()["error"]["message"]
        assert "deadline" in message and "never started" in message
        if kind.startswith("speech"):
            assert r.json()["error"]["type"] == "server_error"  # OpenAI's shape
        assert engine.stats().expired == before.expired + 1
    finally:
        hog.close()  # the server sees the disconnect and aborts the hog
    wait_for(lambda: engine.active == 0, 10, "the hog is aborted")


def test_a_request_that_starts_in_time_may_run_past_the_deadline(
        busy_server: RunningServer) -> None:
    """The deadline bounds the wait for a slot, not the generation: a request admitted in
    time runs to the end even when that takes longer than REQUEST_TIMEOUT_S (1 s)."""
    started = time.perf_counter()
    r = httpx.post(busy_server.url + "/tts", timeout=120, json={"text": LONG_TEXT, "seed": 5})
    assert r.status_code == 200
    assert time.perf_counter() - started > 1.0, "pick a request that runs past 1 s"


def test_waiters_behind_the_deadline_do_not_stall_the_loop(busy_server: RunningServer) -> None:
    """Many requests queued behind the hog all expire together, each with its 504."""
    hog = occupy(busy_server)
    results: list[int] = []

    def one() -> None:
        r = httpx.post(busy_server.url + "/tts", json={"text": "hi", "seed": 1}, timeout=30)
        results.append(r.status_code)

    try:
        with healthz_guard(busy_server.url):
            threads = [threading.Thread(target=one) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert results == [504] * 12
    finally:
        hog.close()
    wait_for(lambda: _engine(busy_server).active == 0, 10, "the hog is aborted")


@pytest.mark.parametrize("delay_s", [0.0, 0.005, 0.02, 0.1, 0.3, "headers"])
def test_clients_that_vanish_at_any_moment_leave_nothing_behind(
        server: RunningServer, delay_s: float | str) -> None:
    """Hang up while the request is prepared, waits for its first token, or streams:
    every sequence is aborted and its place in the engine's queue given back."""
    engine = _engine(server)
    for i in range(6):
        sock = raw_request(server, "/tts", {**STALLED_BODY, "seed": 20 + i})
        if delay_s == "headers":
            sock.settimeout(10)
            assert sock.recv(16).startswith(b"HTTP/1.1 200")
        else:
            time.sleep(float(delay_s) * i / 3)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST: gone at once
    wait_for(lambda: engine.active == 0, 10, "every sequence is aborted")
    wait_for(lambda: engine._outstanding == 0, 5, "every place is given back")
    assert not engine._parked
