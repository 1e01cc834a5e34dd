"""Slow clients against the real server over real sockets (issue 13, item 4): headers
that never finish, bodies that drip or pause, more connections than the cap. Each is cut
off with a JSON answer naming its limit, never before the limit; none holds an admission
slot; /healthz keeps answering throughout (the guard); a large upload on a slow but honest
link is still served. Waits are for events (the server's connection count, its answer),
with hang guards; no assertion depends on how fast the machine is."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.healthz_guard import healthz_guard
from bench.hostile import MULTIPART, multipart, read_response, tone_wav
from tests.conftest import HANG_S, wait_until
from tests.tts_server import RunningServer, serve_app

pytest_plugins = ("tests.clap_fixtures",)

LIMITS = {"header_timeout_s": 1.0, "body_idle_timeout_s": 0.6, "body_timeout_s": 1.5,
          "body_min_rate": 100_000, "max_connections": 24, "max_in_flight": 2}


@pytest.fixture(scope="module")
def server(clap_models_dir: Path) -> Iterator[RunningServer]:
    with serve_app(models_dir=clap_models_dir, models="clap", warmup=False, **LIMITS) as s:
        yield s


def classify_body() -> bytes:
    return multipart([("labels", "dog"), ("labels", "rain")], tone_wav(1.0))


def head(server: RunningServer, body_length: int, path: str = "/classify") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {body_length}\r\n\r\n").encode()


def error_message(body: bytes) -> str:
    return str(json.loads(body)["error"]["message"])


def legit_classify(server: RunningServer) -> int:
    body = classify_body()
    with socket.create_connection((server.host, server.port), timeout=HANG_S) as sock:
        sock.sendall(head(server, len(body)) + body)
        return read_response(sock)[0]


def test_headers_that_never_finish_are_cut_off(server: RunningServer) -> None:
    started = time.monotonic()  # before connecting: the server's clock starts after it
    with healthz_guard(server.url), socket.create_connection(
            (server.host, server.port), timeout=HANG_S) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        status, _, body = read_response(sock)
    assert status == 408 and "AUDIOSERVE_HEADER_TIMEOUT_S" in error_message(body)
    assert time.monotonic() - started >= LIMITS["header_timeout_s"]  # not cut off early


def test_a_dripping_body_gets_408_and_the_service_serves_meanwhile(server: RunningServer
                                                                   ) -> None:
    body = classify_body()
    started = time.monotonic()  # before the head: the server's clock starts after it
    with healthz_guard(server.url), socket.create_connection(
            (server.host, server.port), timeout=HANG_S) as sock:
        sock.sendall(head(server, len(body)))
        # a byte every 0.05 s (12 times within the 0.6 s idle limit): never idle, and at
        # 20 bytes/s never done within body_timeout_s; dripped until the server answers
        # (its answer is the message below: the total limit, not the idle one)
        with contextlib.suppress(OSError):
            for byte in body[:int(HANG_S / 0.05)]:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.05)[0]:
                    break  # the answer is waiting
        status, headers, answer = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408, answer
    assert "did not arrive in time" in error_message(answer)
    assert headers.get("connection") == "close"
    assert elapsed >= LIMITS["body_timeout_s"]  # not cut off early
    assert legit_classify(server) == 200


def test_a_pausing_body_gets_408_naming_the_idle_limit(server: RunningServer) -> None:
    body = classify_body()
    with socket.create_connection((server.host, server.port), timeout=HANG_S) as sock:
        started = time.monotonic()  # before sending: the server's idle clock starts after
        sock.sendall(head(server, len(body)) + body[: len(body) // 2])
        status, _, answer = read_response(sock)  # and then silence
    assert status == 408 and "AUDIOSERVE_BODY_IDLE_TIMEOUT_S" in error_message(answer)
    assert time.monotonic() - started >= LIMITS["body_idle_timeout_s"]  # not cut off early


def test_slow_uploads_hold_no_admission_slot(server: RunningServer) -> None:
    """max_in_flight is 2: six dripping uploads used to take every slot (503 for all)."""
    body = classify_body()
    wait_until(lambda: server.connections == 0, "earlier tests' connections to close")
    socks = [socket.create_connection((server.host, server.port), timeout=HANG_S)
             for _ in range(6)]
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"-")
            time.sleep(0.1)

    try:
        for sock in socks:
            sock.sendall(head(server, len(body)) + body[:100])
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        wait_until(lambda: server.connections >= len(socks),
                   "the server holds the six uploads' connections")
        with healthz_guard(server.url):
            statuses = [legit_classify(server) for _ in range(4)]
        assert statuses == [200] * 4
    finally:
        stop.set()
        for sock in socks:
            sock.close()


def test_an_honest_slow_upload_earns_its_time(clap_models_dir: Path) -> None:
    """300 KB in 15 KB pieces 0.05 s apart takes at least 0.95 s, three times
    body_timeout_s (0.3 s), on any machine: without the min-rate rule it gets 408. With
    it (0.3 s plus 1 s per 50 KB received) each piece earns 0.3 s and takes 0.05 s, so the
    upload is served even if the sender runs 6x slower than planned."""
    body = multipart([("labels", "dog"), ("labels", "rain")], tone_wav(9.0))
    for min_rate, expected in ((50_000, 200), (10**9, 408)):
        with serve_app(models_dir=clap_models_dir, models="clap", warmup=False,
                       body_timeout_s=0.3, body_min_rate=min_rate) as server, \
                socket.create_connection((server.host, server.port), timeout=HANG_S) as sock:
            sock.sendall(head(server, len(body)))
            with contextlib.suppress(OSError):  # refused mid-way: the answer is waiting
                for i in range(0, len(body), 15_000):
                    sock.sendall(body[i:i + 15_000])
                    time.sleep(0.05)
            assert read_response(sock)[0] == expected, min_rate


def test_connections_over_the_cap_get_503_with_retry_after(server: RunningServer) -> None:
    wait_until(lambda: server.connections == 0, "earlier tests' connections to close")
    cap = LIMITS["max_connections"]
    held = [socket.create_connection((server.host, server.port), timeout=HANG_S)
            for _ in range(cap)]
    try:
        wait_until(lambda: server.connections >= cap, "the server holds the cap's connections")
        with socket.create_connection((server.host, server.port), timeout=HANG_S) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(extra)
        assert status == 503 and headers["retry-after"] == "1"
        assert "AUDIOSERVE_MAX_CONNECTIONS" in error_message(body)
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: server.connections < cap, "the held connections to close")
    assert legit_classify(server) == 200


def test_many_half_sent_requests_are_all_closed(server: RunningServer) -> None:
    """What 2,000 half-sent requests did (all stayed open), within the connection cap."""
    socks = [socket.create_connection((server.host, server.port), timeout=HANG_S)
             for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    closed = 0
    for sock in socks:  # each waits for the server's answer (HANG_S: a hang guard)
        status, _, _ = read_response(sock)
        closed += status == 408
        sock.close()
    assert closed == len(socks)
