"""What a WebSocket client gets wrong, at the edge (service.edge.server.
GuardedWebSocketProtocol), from a raw socket: each mistake closes its connection with the
code for it (1007 invalid UTF-8, 1002 a bad frame), and none makes the server log a
traceback. uvicorn logged one for invalid UTF-8 in a text message, for any bad frame
sent before the route accepted, and for the route's next send after such a close, so any
client could fill the log at will."""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import live_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app, serve_asgi
from tests.ws_client import CLOSE, CONT, PING, TEXT, RawSocket, close_frame, frame

MISTAKES = {
    "invalid UTF-8 in a text frame": (frame(TEXT, b"\xff"), 1007),
    "invalid UTF-8 across fragments": (
        frame(TEXT, b"ok \xe2\x82", fin=False) + frame(CONT, b"("), 1007),
    "a text message cut mid-character": (frame(TEXT, b"ok \xe2\x82"), 1007),
    "a reserved opcode": (frame(0x3, b"x"), 1002),
    "reserved bits set": (frame(TEXT, b"x", rsv=4), 1002),
    "an unmasked frame": (frame(TEXT, b"x", masked=False), 1002),
    "a control frame over 125 bytes": (frame(PING, b"x" * 126), 1002),
    "a fragmented control frame": (frame(PING, b"x", fin=False), 1002),
    "a close code out of range": (frame(CLOSE, struct.pack(">H", 999)), 1002),
    "a reserved close code": (frame(CLOSE, struct.pack(">H", 1005)), 1002),
    "a close frame of one byte": (frame(CLOSE, b"\x03"), 1002),
    "a close reason not UTF-8": (frame(CLOSE, struct.pack(">H", 1000) + b"\xff"), 1007),
    "a continuation of nothing": (frame(CONT, b"x"), 1002),
    "a new message inside a fragmented one": (
        frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    "a frame over the size limit": (
        bytes([0x82, 0xFF]) + struct.pack(">Q", 2**40) + bytes(4), 1009),
}


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record the server logs, uvicorn's too (its loggers do not propagate)."""
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_log.removeHandler(caplog.handler)


def tracebacks(log: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in log.records
            if r.exc_info or r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def live_server(live_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=live_models_dir, warmup=False) as s:
        yield s


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_protocol_error_closes_with_its_code_and_logs_no_traceback(
        live_server: RunningServer, server_log: pytest.LogCaptureFixture, mistake: str) -> None:
    data, code = MISTAKES[mistake]
    ws = RawSocket(live_server)
    ws.sock.sendall(data)
    assert close_frame(ws)[0] == code
    assert tracebacks(server_log) == []


def test_invalid_utf8_says_so_in_the_close_frame(live_server: RunningServer) -> None:
    ws = RawSocket(live_server)
    ws.sock.sendall(frame(TEXT, b"\xff"))
    assert close_frame(ws) == (1007, b"invalid UTF-8 in a text message (invalid start byte)")


class SlowToAccept:
    """A route that accepts only once it hears from the client again (as one checking a
    slow store would be late): what the client sent meanwhile was parsed before the 101."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.ended = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        try:
            await receive()
            self.connected.set()
            await asyncio.wait_for(receive(), 30)  # the disconnect the mistake made
            await send({"type": "websocket.accept"})
        finally:
            self.ended.set()


@pytest.mark.parametrize("mistake", ["a reserved opcode", "invalid UTF-8 in a text frame",
                                     "pings over the rate", "tiny fragments"])
def test_a_mistake_before_the_route_accepts_drops_the_connection_quietly(
        server_log: pytest.LogCaptureFixture, mistake: str) -> None:
    """No close frame may precede the 101: the connection is dropped. uvicorn asserted
    there (or its close raised), and asyncio logged the connection's fatal error."""
    data = {"pings over the rate": b"".join(frame(PING, b"p") for _ in range(20)),
            "tiny fragments": frame(TEXT, b"a", fin=False)
            + b"".join(frame(CONT, b"b", fin=False) for _ in range(1100))
            }.get(mistake) or MISTAKES[mistake][0]
    app = SlowToAccept()
    with serve_asgi(app, ws_max_pings_per_s=2) as server:
        ws = RawSocket(server, path="/slow", answered=False)
        assert app.connected.wait(30)  # the handshake is in: the frames come in a read
        ws.sock.sendall(data)          # of their own (uvicorn drops any after the head)
        assert ws.rest() == b""  # no 101, no frame: closed
        assert app.ended.wait(30), "the route never ended"
    assert tracebacks(server_log) == []


class Talker:
    """A route that keeps sending to its client, and records how its sending ended."""

    def __init__(self, message_bytes: int) -> None:
        self.message = "x" * message_bytes
        self.ended: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        try:
            while True:
                await send({"type": "websocket.send", "text": self.message})
                await asyncio.sleep(0.02)
        except BaseException as exc:
            self.ended.append(exc)
            raise


@pytest.mark.parametrize("cause", ["a bad frame", "an unanswered keepalive ping"])
@pytest.mark.parametrize("message_bytes", [1024, 256 * 1024])
def test_after_the_server_fails_a_connection_the_routes_sends_are_a_disconnect(
        server_log: pytest.LogCaptureFixture, cause: str, message_bytes: int) -> None:
    """The client reads nothing, so the close frame waits behind what it has not read and
    the connection is not lost yet. A route sending small messages sent again: uvicorn
    raised a RuntimeError there (a traceback, 'Exception in ASGI application'). A route
    waiting for the full buffer to drain waited for ever, and held the connection with
    it. Now either send is a disconnect, and the connection is reset `WRITE_TIMEOUT_S`
    after the route ends."""
    app = Talker(message_bytes)
    keepalive = {"ws_ping_interval": 0.5, "ws_ping_timeout": 0.5}
    with serve_asgi(app, send_buffer_bytes=4096, write_timeout_s=2,
                    uvicorn_options=keepalive if cause != "a bad frame" else None) as server:
        ws = RawSocket(server, path="/talk", rcvbuf=4096)  # and never reads again
        time.sleep(1.0)
        if cause == "a bad frame":
            ws.sock.sendall(frame(0x3, b"x"))
        wait_until(lambda: bool(app.ended), "the route's sends ended")
        wait_until(lambda: server.connections == 0, "the connection reset")
    assert isinstance(app.ended[0], OSError), repr(app.ended[0])  # uvicorn's disconnect
    assert tracebacks(server_log) == []


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
