"""The HTTP edge over a real socket (service/edge/server.py): every connection state has a bound.

Unread bodies are closed after a linger (no number of them denies /healthz), pipelining
is taken in one request at a time, a response nobody reads is dropped by the write
timeout, request trailers never reach the app while response trailers (ASGI's extension)
end a chunked answer, 100 Continue comes only after the key, a
half-close gets its answer, the raw head is capped in bytes and fields, HEAD answers like
GET and no Location is built from Host. Ordered by events (a socket's close, a thread's
end, the server's own connection set), never by sleeps."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import h11
import pytest
from starlette.types import Receive, Scope, Send

from bench.hostile import read_response
from service.edge.server import guarded_protocol
from service.errors import TRAILERS_EXTENSION
from service.settings import Settings
from tests.h11_client import exchange
from tests.tts_server import serve_app, serve_asgi

KEY = "edge-test-key"


@pytest.fixture
def empty_models(tmp_path: Path) -> Path:
    return tmp_path


def connect(server: Any) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=30)


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes (True) or the socket's timeout passes (False)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def healthz_status(server: Any) -> int:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_response(sock)[0]


# -- 1: unread bodies ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/healthz", "/no-such-route", "/classify"])
def test_unread_bodies_are_closed_and_cannot_fill_the_connection_cap(
        empty_models: Path, target: str) -> None:
    """As many sockets as the cap, each declaring a gigabyte the route never reads and
    sending one more byte after its answer: every one is closed by the server (before:
    open for ever, and the next client got 503 too_many_connections)."""
    cap = 4
    with serve_app(models_dir=empty_models, models="none", max_connections=cap, api_key=KEY,
                   unread_body_linger_s=0.5) as server:
        socks = [connect(server) for _ in range(cap)]
        try:
            for sock in socks:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                             "Content-Length: 1000000000\r\n\r\nx".encode())
                assert read_response(sock)[0] in (200, 401, 404)
                sock.sendall(b"y")
            assert all(closed_by_server(sock) for sock in socks)
            wait_for(lambda: server.connections == 0, "every connection closed")
            assert healthz_status(server) == 200
        finally:
            for sock in socks:
                sock.close()


# -- 2: pipelining ------------------------------------------------------------------------

def test_pipelined_requests_are_taken_in_one_at_a_time(empty_models: Path) -> None:
    """A client pipelines 2 million requests and reads no answer: the server stops reading
    once answers back up, so what it holds of that connection stays bounded (h11's buffer,
    one read) and far fewer requests are taken in than were sent; then the write timeout
    drops it."""
    request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    count = 2_000_000
    with serve_app(models_dir=empty_models, models="none", write_timeout_s=1.0) as server:
        before = server.server.server_state.total_requests
        sock = connect(server)
        sent = threading.Thread(target=lambda: _send_quietly(sock, request * count))
        sent.start()
        wait_for(lambda: any(p.flow.write_paused for p in server.server.server_state.connections),
                 "the answers back up")
        for protocol in list(server.server.server_state.connections):
            assert len(protocol.conn._receive_buffer) <= 1024 * 1024
        sent.join(timeout=60)  # the write timeout resets the connection: the send fails
        assert not sent.is_alive()
        wait_for(lambda: server.connections == 0, "the connection dropped")
        answered = server.server.server_state.total_requests - before
        assert answered < count // 100, answered
        sock.close()
        assert healthz_status(server) == 200


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with suppress(OSError):
        sock.sendall(data)


# -- 3: write timeout ---------------------------------------------------------------------

BIG = 64 * 1024 * 1024


async def big_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """One whole 64 MB answer in a single send (as a Response with its body built)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(BIG).encode())]})
    await send({"type": "http.response.body", "body": bytes(BIG)})


def test_a_client_that_never_reads_is_cut_and_the_answer_freed() -> None:
    with serve_asgi(big_answer, write_timeout_s=0.5) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        protocol = next(iter(server.server.server_state.connections))
        wait_for(lambda: protocol.flow.write_paused, "the answer backs up")
        # dropped: the transport's buffer (most of the 64 MB) discarded
        wait_for(lambda: server.connections == 0, "the stalled connection dropped")
        assert protocol.transport.get_write_buffer_size() == 0


def test_a_client_that_reads_gets_the_whole_answer() -> None:
    """...as long as it keeps reading (64 KiB per write timeout is progress)."""
    with serve_asgi(big_answer, write_timeout_s=2.0) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == BIG


# -- 4: trailers --------------------------------------------------------------------------

def chunked_with_trailer(target: str, trailer: str, headers: str = "") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/json\r\n{headers}\r\n2\r\n{{}}\r\n0\r\n{trailer}\r\n\r\n"
            ).encode()


@pytest.mark.parametrize("trailer", [f"Authorization: Bearer {KEY}",
                                     f"authorization: bearer {KEY}"])
def test_a_key_in_a_trailer_does_not_authenticate(empty_models: Path, trailer: str) -> None:
    with serve_app(models_dir=empty_models, models="none", api_key=KEY) as server, \
            connect(server) as sock:
        sock.sendall(chunked_with_trailer("/embed/text", trailer))
        assert read_response(sock)[0] == 401


def test_trailers_never_reach_the_scope() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve_asgi(app) as server, connect(server) as sock:
        sock.sendall(chunked_with_trailer("/", "X-Request-ID: from-trailer\r\n"
                                          "Content-Type: text/evil"))
        assert read_response(sock)[0] == 204
    names = {name for name, _ in seen[0]}
    assert b"x-request-id" not in names
    assert (b"content-type", b"application/json") in seen[0]
    assert (b"content-type", b"text/evil") not in seen[0]


async def trailing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Says whether the scope offers response trailers, then sends one anyway (as an app
    unaware of the extension's absence might): a body in two parts, then the trailer."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    offered = TRAILERS_EXTENSION in scope.get("extensions", {})
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"trailer", b"x-checksum"),
                            (b"x-offered", b"yes" if offered else b"no")]})
    await send({"type": "http.response.body", "body": b"first ", "more_body": True})
    await send({"type": "http.response.body", "body": b"second"})
    await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"a")],
                "more_trailers": True})
    await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"b")]})


def test_response_trailers_end_a_chunked_answer_and_keep_the_connection() -> None:
    with serve_asgi(trailing_app) as server, connect(server) as sock:
        conn = h11.Connection(h11.CLIENT)
        for _ in range(2):  # the second answer on the same connection: the first ended
            answer = exchange(sock, "GET", "/", conn=conn)
            assert answer.complete and answer.headers["x-offered"] == "yes"
            assert answer.headers["transfer-encoding"] == "chunked"
            assert answer.body == b"first second"
            assert answer.trailers == {"x-checksum": "b"}  # both sent; h11 keeps the last
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")  # no body: not offered
        assert b"x-offered: no" in sock.recv(65536)


def test_an_http_1_0_answer_is_whole_without_trailers() -> None:
    """HTTP/1.0 has no chunks, so nowhere to put a trailer: not offered; an app that sends
    one anyway still gets its whole answer out (close-delimited)."""
    with serve_asgi(trailing_app) as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"x-offered: no" in head
    assert body == b"first second"


def test_an_answer_whose_trailers_never_come_is_cut() -> None:
    """The body's last part does not end the message while trailers were announced: an app
    that returns without them leaves it incomplete (the client sees a cut transfer)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "trailers": True})
            await send({"type": "http.response.body", "body": b"audio"})

    with serve_asgi(app) as server, connect(server) as sock:
        answer = exchange(sock, "GET", "/")
    assert answer.body == b"audio" and not answer.complete


# -- 5: 100-continue, half-close, head caps, Location, HEAD --------------------------------

def test_100_continue_comes_only_after_the_key(empty_models: Path) -> None:
    head = ("POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\nExpect: 100-continue\r\n{}\r\n")
    with serve_app(models_dir=empty_models, models="none", api_key=KEY) as server:
        with connect(server) as sock:
            sock.sendall(head.format("").encode())
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 401"), first[:100]
            assert closed_by_server(sock)  # the body never came: the connection closes
        with connect(server) as sock:
            sock.sendall(head.format(f"Authorization: Bearer {KEY}\r\n").encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")


def test_a_half_close_after_a_whole_request_gets_its_answer() -> None:
    """The app answers only once the server has seen the client's EOF (the protocol's
    own hook signals it): before, the EOF dropped the connection and the answer."""
    eof_seen = threading.Event()
    base = guarded_protocol(Settings(_env_file=None))

    class Probe(base):  # type: ignore[misc, valid-type]
        def eof_received(self) -> bool | None:
            keep = super().eof_received()
            eof_seen.set()
            return keep

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        assert await asyncio.to_thread(eof_seen.wait, 30)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve_asgi(app, uvicorn_options={"http": Probe}) as server, connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):  # until the server closes, after the answer
            data += chunk
    # the interim 100 is the probe for a peer that closed instead (see below)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\nok")


def test_a_client_that_closes_after_its_request_is_seen_as_gone() -> None:
    """...while a client that closed (not half-closed) is a disconnect for the app, so
    its work stops: the EOF cannot tell them apart, the reset after the probe can."""
    disconnected = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if (await receive())["type"] == "http.disconnect":  # the work would stop here
            disconnected.set()

    with serve_asgi(app) as server:
        sock = connect(server)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        sock.close()
        assert disconnected.wait(30)
        wait_for(lambda: server.connections == 0, "the connection dropped")


@pytest.mark.parametrize("head", [
    "X:\r\n" * 60_000,  # empty values: the old cap counted name and value only
    "X-Pad: " + " " * 70_000 + "v\r\n",  # padding, all in one read
    "".join(f"X-{i}: v\r\n" for i in range(101)),  # over the field count
])
def test_the_raw_head_is_capped_in_bytes_and_fields(empty_models: Path, head: str) -> None:
    with serve_app(models_dir=empty_models, models="none") as server, connect(server) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        status, _, body = read_response(sock)
    assert status == 431 and b"AUDIOSERVE_MAX_HEADER_FIELDS" in body


def test_a_head_within_the_caps_is_served(empty_models: Path) -> None:
    head = "".join(f"X-{i}: v\r\n" for i in range(90))
    with serve_app(models_dir=empty_models, models="none") as server, connect(server) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        assert read_response(sock)[0] == 200


def test_no_redirect_builds_location_from_host(empty_models: Path) -> None:
    with serve_app(models_dir=empty_models, models="none") as server, connect(server) as sock:
        sock.sendall(b"GET /healthz/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, headers, _ = read_response(sock)
    assert status == 404 and "location" not in headers


def test_head_answers_like_get_without_a_body(empty_models: Path) -> None:
    with serve_app(models_dir=empty_models, models="none") as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        body = read_response(sock)[2]
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        assert f"content-length: {len(body)}".encode() in head.lower()
        assert read_response(sock)[0] == 200  # the next answer follows at once: no body
        sock.sendall(b"HEAD /classify HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 405")


# -- 6: WebSocket compression ---------------------------------------------------------------

async def _ws_echo_once(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
    await send({"type": "websocket.close", "code": 1000})


@pytest.mark.parametrize("compression", [False, True])
def test_websocket_compression_is_a_setting_and_off_by_default(compression: bool) -> None:
    """A client that offers permessage-deflate (websockets does by default) gets it only
    when AUDIOSERVE_WS_COMPRESSION is on: audio does not compress, and deflating it cost
    the speech socket's event loop a third of its time at 64 sessions."""
    from websockets.sync.client import connect as ws_connect

    overrides = {"ws_compression": True} if compression else {}
    with (serve_asgi(_ws_echo_once, **overrides) as server,
          ws_connect(server.url.replace("http", "ws") + "/") as ws):
        offered = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        ws.send(b"\x00\x01" * 1000)
        assert ws.recv() == b"\x00\x01" * 1000
    assert ("permessage-deflate" in offered) is compression


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize(("piece", "refused"), [(b" ", True), (b" " * 600, False)])
def test_a_body_in_thousands_of_tiny_chunks_is_refused(empty_models: Path, piece: bytes,
                                                       refused: bool) -> None:
    """Each chunk costs the event loop a parse whatever its size: 1-byte chunks at 160 KB/s
    held other clients' /healthz at 2 s while passing every rate limit. Past 1024 chunks
    they must average 512 bytes; a body of 600-byte chunks is read as usual."""
    pieces = [piece] * 1100 + [b'{"input": "a dog"}']  # JSON, leading white space and all
    with serve_app(models_dir=empty_models, models="none") as server, connect(server) as sock:
        sock.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(pieces))
        status, _, answer = read_response(sock)
        assert healthz_status(server) == 200
    if refused:
        assert status == 400 and b"pieces averaging 1 bytes" in answer, answer
    else:
        assert status == 503 and b"model_not_loaded" in answer, answer  # read, then routed
