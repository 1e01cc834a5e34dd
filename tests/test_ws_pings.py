"""WebSocket control and continuation frames at the edge
(service.edge.server.GuardedWebSocketProtocol), from a raw socket: a client that floods
pings is closed 1008, one that sends many pings without reading cannot grow the server's
write buffer with pongs (they are coalesced into the latest one, as RFC 6455 allows), and
a message in thousands of tiny fragments is closed 1008."""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import live_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app

PATH = "/v1/audio/analysis/stream"
PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1
CONFIG = b'{"type": "session.config", "input": {"format": "pcm_s16le", "sample_rate": 16000}, ' \
         b'"classify": {"labels": ["a", "b"]}}'


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (masked, as clients must)."""
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return bytes([(0x80 if fin else 0) | opcode]) + size + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket:
    def __init__(self, server: RunningServer, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(60)
        self.sock.connect((server.host, server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {PATH} HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """The server's frames (unmasked), until the connection ends."""
        while True:
            try:
                first, second = self._take(2)
            except ConnectionError:
                return
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._take(8))[0]
            yield first & 0x0F, self._take(n)


@pytest.fixture(scope="module")
def flood_server(live_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=1e9, warmup=False) as s:
        yield s


def test_pings_over_the_rate_close_the_connection_1008(
        live_models_dir: Path) -> None:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=10, warmup=False) as s:
        ws = RawSocket(s)
        ws.sock.sendall(_frame(TEXT, CONFIG))
        frames = ws.frames()
        for i in range(3):  # a keepalive's pings, each answered
            ws.sock.sendall(_frame(PING, b"keepalive %d" % i))
            assert next(f for f in frames if f[0] != TEXT) == (PONG, b"keepalive %d" % i)
        ws.sock.sendall(b"".join(_frame(PING, b"%d" % i) for i in range(50)))
        got = list(frames)
    pongs = [payload for opcode, payload in got if opcode == PONG]
    assert len(pongs) <= 10, len(pongs)  # at most the rest of the burst, then no more
    closes = [payload for opcode, payload in got if opcode == CLOSE]
    assert closes and struct.unpack(">H", closes[0][:2])[0] == 1008
    assert b"AUDIOSERVE_WS_MAX_PINGS_PER_S" in closes[0]


def test_pongs_owed_to_a_client_that_does_not_read_are_coalesced(
        flood_server: RunningServer) -> None:
    """100,000 pings (12.7 MB of pongs, three times what the kernel's buffers hold) sent
    without reading: the server writes a pong only while its buffer has room, so the
    client gets far fewer, in order, the last ping's among them."""
    count = 100_000
    ws = RawSocket(flood_server, rcvbuf=4096)
    ws.sock.sendall(_frame(TEXT, CONFIG))
    for start in range(0, count, 5000):
        ws.sock.sendall(b"".join(_frame(PING, b"%06d" % i + b"x" * 119)
                                 for i in range(start, start + 5000)))
    ws.sock.sendall(_frame(PING, b"last"))
    answered = []
    for opcode, payload in ws.frames():
        if opcode == PONG:
            answered.append(payload)
            if payload == b"last":
                break
    ws.sock.close()
    numbers = [int(p[:6]) for p in answered[:-1]]
    assert numbers == sorted(numbers)
    assert len(answered) < count // 2, len(answered)  # every pong written: 100,001


def test_a_message_in_thousands_of_tiny_fragments_is_closed_1008(
        flood_server: RunningServer) -> None:
    """Each continuation frame costs a parse whatever its size: 1-byte fragments kept the
    event loop busy while the message stayed under every size limit."""
    ws = RawSocket(flood_server)
    ws.sock.sendall(_frame(TEXT, b'{"type": ', fin=False)
                    + b"".join(_frame(0x0, b" ", fin=False) for _ in range(3000)))
    closes = [payload for opcode, payload in ws.frames() if opcode == CLOSE]
    assert closes and struct.unpack(">H", closes[0][:2])[0] == 1008
    assert b"pieces averaging 1 bytes" in closes[0]


def test_a_rate_under_one_ping_a_second_still_answers_a_ping(
        live_models_dir: Path) -> None:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=0.5, warmup=False) as s:
        ws = RawSocket(s)
        ws.sock.sendall(_frame(TEXT, CONFIG) + _frame(PING, b"once"))
        frames = ws.frames()
        assert next(f for f in frames if f[0] != TEXT) == (PONG, b"once")
        ws.sock.sendall(_frame(PING, b"too soon"))
        closes = [payload for opcode, payload in frames if opcode == CLOSE]
    assert closes and struct.unpack(">H", closes[0][:2])[0] == 1008
