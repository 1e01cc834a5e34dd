"""WebSocket control and continuation frames at the edge
(service.edge.server.GuardedWebSocketProtocol), from a raw socket: a client that floods
pings is closed 1008, one that sends many pings without reading cannot grow the server's
write buffer with pongs (they are coalesced into the latest one, as RFC 6455 allows), and
a message in thousands of tiny fragments is closed 1008."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import live_models_dir  # noqa: F401
from tests.tts_server import RunningServer, serve_app
from tests.ws_client import CLOSE, CONT, PING, PONG, TEXT, RawSocket, frame

CONFIG = b'{"type": "session.config", "input": {"format": "pcm_s16le", "sample_rate": 16000}, ' \
         b'"classify": {"labels": ["a", "b"]}}'


@pytest.fixture(scope="module")
def flood_server(live_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=1e9, warmup=False) as s:
        yield s


def test_pings_over_the_rate_close_the_connection_1008(
        live_models_dir: Path) -> None:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=10, warmup=False) as s:
        ws = RawSocket(s)
        ws.sock.sendall(frame(TEXT, CONFIG))
        frames = ws.frames()
        for i in range(3):  # a keepalive's pings, each answered
            ws.sock.sendall(frame(PING, b"keepalive %d" % i))
            assert next(f for f in frames if f[0] != TEXT) == (PONG, b"keepalive %d" % i)
        ws.sock.sendall(b"".join(frame(PING, b"%d" % i) for i in range(50)))
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
    ws.sock.sendall(frame(TEXT, CONFIG))
    for start in range(0, count, 5000):
        ws.sock.sendall(b"".join(frame(PING, b"%06d" % i + b"x" * 119)
                                 for i in range(start, start + 5000)))
    ws.sock.sendall(frame(PING, b"last"))
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
    ws.sock.sendall(frame(TEXT, b'{"type": ', fin=False)
                    + b"".join(frame(CONT, b" ", fin=False) for _ in range(3000)))
    closes = [payload for opcode, payload in ws.frames() if opcode == CLOSE]
    assert closes and struct.unpack(">H", closes[0][:2])[0] == 1008
    assert b"pieces averaging 1 bytes" in closes[0]


def test_a_rate_under_one_ping_a_second_still_answers_a_ping(
        live_models_dir: Path) -> None:  # noqa: F811
    with serve_app(models_dir=live_models_dir, ws_max_pings_per_s=0.5, warmup=False) as s:
        ws = RawSocket(s)
        ws.sock.sendall(frame(TEXT, CONFIG) + frame(PING, b"once"))
        frames = ws.frames()
        assert next(f for f in frames if f[0] != TEXT) == (PONG, b"once")
        ws.sock.sendall(frame(PING, b"too soon"))
        closes = [payload for opcode, payload in frames if opcode == CLOSE]
    assert closes and struct.unpack(">H", closes[0][:2])[0] == 1008
