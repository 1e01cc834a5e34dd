"""The connection-level half of the hostile corpus (issue 21, classes 1-5).

Two kinds: `cases()` are single raw requests like the rest of the corpus (trailers,
`Expect: 100-continue` before the key, raw head caps, Location from Host, HEAD, unread
bodies); `ATTACKS` are connection attacks a single request cannot express (as many
sockets as the cap holding unread bodies, pipelining without reading, a large answer
nobody reads). Each attack returns what it measured, judged by `Attack.met`; the
benchmarks (bench/bench_hostile.py, bench/bench_edge.py) run them against a live server.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.hostile import Case, read_response

KEY_HEADER = "Authorization: Bearer bench-key"  # the keyed bench server's key


@dataclass(frozen=True)
class RawCase(Case):
    """A case whose bytes are given whole (`{host}` filled in): framing the plain `Case`
    cannot write (chunked with trailers, a declared body that never comes)."""

    raw: str = ""

    def request_bytes(self, host: str) -> bytes:
        return self.raw.replace("{host}", host).encode("latin-1") + self.body


def _chunked(path: str, trailer: str, content_type: str = "application/json") -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {content_type}\r\n\r\n2\r\n{{}}\r\n0\r\n{trailer}\r\n\r\n")


def cases() -> list[Case]:
    head = "GET /healthz HTTP/1.1\r\nHost: {host}\r\n"
    return [
        RawCase("trailer carries the key", "21.4 trailers", "/embed/text", api_key=True,
                raw=_chunked("/embed/text", KEY_HEADER), expect=(401,),
                note="httptools made trailers headers: the key in a trailer authenticated"),
        RawCase("trailer carries a lower-case key", "21.4 trailers", "/classify",
                api_key=True, raw=_chunked("/classify", KEY_HEADER.lower()), expect=(401,)),
        RawCase("trailer overrides Content-Type", "21.4 trailers", "/embed/text",
                raw=_chunked("/embed/text", "Content-Type: text/plain"), expect=(422,),
                note="the JSON body is judged by its header, not by a trailer"),
        RawCase("Expect 100-continue without a key", "21.5 100-continue", "/classify",
                api_key=True, expect=(401,),
                raw="POST /classify HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
                note="was 100 Continue, then the body read, then 401"),
        RawCase("Expect 100-continue, 1 GB declared, no key", "21.5 100-continue",
                "/embed/text", api_key=True, expect=(401,),
                raw="POST /embed/text HTTP/1.1\r\nHost: {host}\r\nExpect: 100-Continue\r\n"
                    "Content-Length: 1000000000\r\n\r\n"),
        RawCase("60,000 empty header fields", "21.5 head caps", "/healthz", expect=(431,),
                raw=head + "X:\r\n" * 60_000 + "\r\n",
                note="was taken: the cap counted names and values only"),
        RawCase("70 KB of padding in one field", "21.5 head caps", "/healthz",
                expect=(431,), raw=head + "X-Pad: " + " " * 70_000 + "v\r\n\r\n"),
        RawCase("101 header fields", "21.5 head caps", "/healthz", expect=(431,),
                raw=head + "".join(f"X-{i}: v\r\n" for i in range(101)) + "\r\n"),
        RawCase("trailing slash, forged Host", "21.5 Location", "/healthz/", method="GET",
                expect=(404,), raw="GET /healthz/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                note="was 307 to http://evil.example/healthz"),
        RawCase("trailing slash on a POST route", "21.5 Location", "/classify/",
                expect=(404,), raw="POST /classify/ HTTP/1.1\r\nHost: evil.example\r\n"
                                   "Content-Length: 0\r\n\r\n"),
        RawCase("HEAD /healthz", "21.5 HEAD", "/healthz", method="HEAD", expect=(200,),
                raw="HEAD /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
                note="was 405"),
        RawCase("HEAD /v1/models", "21.5 HEAD", "/v1/models", method="HEAD", expect=(200,),
                raw="HEAD /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        RawCase("GET with 1 GB declared, 1 byte sent", "21.1 unread body", "/healthz",
                method="GET", expect=(200,), body=b"x",
                raw="GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                    "Content-Length: 1000000000\r\n\r\n"),
        RawCase("404 with 1 GB declared", "21.1 unread body", "/nowhere", method="GET",
                expect=(404,), body=b"x",
                raw="GET /nowhere HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                    "Content-Length: 1000000000\r\n\r\n"),
    ]


# -- connection attacks --------------------------------------------------------------------

@dataclass
class AttackResult:
    name: str
    met: bool
    figures: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attack:
    name: str
    klass: str
    run: Callable[[str, int], AttackResult]
    api_key: bool = False


def healthz_status(host: str, port: int, timeout_s: float = 5.0) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            return read_response(sock)[0]
    except OSError:
        return 0


def _closed_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of `socks` the server closes (EOF or reset) within `seconds`."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + seconds
    while closed < len(socks) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                if ready.recv(65536):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            selector.unregister(ready)
            closed += 1
    selector.close()
    return closed


def unread_bodies(path: str, count: int = 1100, wait_s: float = 10.0,
                  headers: str = "") -> Callable[[str, int], AttackResult]:
    """`count` sockets (more than the default connection cap of 1024), each declaring a
    1 GB body on `path`, reading its answer, then sending one more byte: how many the
    server closes within `wait_s`, and whether /healthz is still served."""

    def run(host: str, port: int) -> AttackResult:
        socks: list[socket.socket] = []
        statuses: dict[int, int] = {}
        try:
            for _ in range(count):
                sock = socket.create_connection((host, port), timeout=10)
                socks.append(sock)
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
                             "Content-Length: 1000000000\r\n\r\nx".encode())
            for sock in socks:
                status = read_response(sock)[0]
                statuses[status] = statuses.get(status, 0) + 1
                with contextlib.suppress(OSError):
                    sock.sendall(b"y")
            during = healthz_status(host, port)
            closed = _closed_within(socks, wait_s)
            after = healthz_status(host, port)
        finally:
            for sock in socks:
                sock.close()
        figures: dict[str, float | int | str] = {
            "answers": " ".join(f"{k}x{v}" for k, v in sorted(statuses.items())),
            "closed_by_server": closed, "healthz_while_held": during,
            "healthz_after": after}
        return AttackResult(f"{count} unread bodies on {path}",
                            closed == count and during == 200 and after == 200, figures)

    return run


def pipeline(request: bytes, seconds: float = 5.0) -> Callable[[str, int], AttackResult]:
    """One connection pipelines `request` for `seconds`, never reading an answer: how
    much the server took in (the bytes the socket accepted) and whether /healthz stays
    served. The caller measures the server's memory."""

    def run(host: str, port: int) -> AttackResult:
        blob = request.replace(b"{host}", host.encode()) * 2000
        sent = 0
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.setblocking(False)
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                _, writable, _ = selectors_select(sock, left)
                if not writable:
                    continue
                try:
                    sent += sock.send(blob)
                except BlockingIOError:
                    continue
                except OSError:
                    break
            healthz = healthz_status(host, port)
        taken = sent // len(request)
        return AttackResult(f"pipelining {request.split(b' ')[1].decode()} for {seconds:g} s",
                            healthz == 200 and sent < 64 * 1024 * 1024,
                            {"requests_accepted_by_socket": taken,
                             "mb_accepted": round(sent / 1e6, 1), "healthz_after": healthz})

    return run


def selectors_select(sock: socket.socket, timeout: float) -> tuple[list[object], list[object],
                                                                     list[object]]:
    import select

    readable, writable, errored = select.select([], [sock], [], min(timeout, 0.5))
    return list(readable), list(writable), list(errored)


def never_read(path: str, copies: int = 40,
               wait_s: float = 40.0) -> Callable[[str, int], AttackResult]:
    """`copies` pipelined requests for a large answer, never read: whether (and when) the
    server drops the connection, freeing what it buffered (`wait_s` is longer than the
    default WRITE_TIMEOUT_S of 30 s)."""

    def run(host: str, port: int) -> AttackResult:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            started = time.monotonic()
            sock.sendall(request * copies)
            closed = _closed_after_stall(sock, wait_s)
            elapsed = time.monotonic() - started
        return AttackResult(f"{copies} x {path}, never read", closed,
                            {"dropped_after_s": round(elapsed, 1) if closed else f">{wait_s:g}",
                             "healthz_after": healthz_status(host, port)})

    return run


def _closed_after_stall(sock: socket.socket, wait_s: float) -> bool:
    """Read nothing while the server should give up, then check it did (EOF or reset
    once the few buffered bytes are read)."""
    deadline = time.monotonic() + wait_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.recv(1, socket.MSG_PEEK)  # only waits; takes nothing out of the buffer
        except TimeoutError:
            continue
        except OSError:
            return True
        if _peer_gone(sock):
            return True
        time.sleep(0.2)  # the answer sits unread by design; check the peer again later
    return _peer_gone(sock)


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the server dropped the connection: a reset shows as an error on the socket
    (SO_ERROR) or in TCP_INFO's state, without reading the answer."""
    import struct

    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        return True
    state = struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
    return state != 1  # 1: TCP_ESTABLISHED


ATTACKS = [
    Attack("unread bodies on /healthz", "21.1 unread body", unread_bodies("/healthz")),
    Attack("unread bodies on a 404", "21.1 unread body", unread_bodies("/nowhere")),
    Attack("unread bodies on the 401 path", "21.1 unread body", unread_bodies("/classify"),
           api_key=True),
    Attack("pipelined /healthz", "21.2 pipelining",
           pipeline(b"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n")),
    Attack("pipelined 404s", "21.2 pipelining",
           pipeline(b"GET /nowhere HTTP/1.1\r\nHost: {host}\r\n\r\n")),
    Attack("pipelined /docs page", "21.2 pipelining",
           pipeline(b"GET /docs HTTP/1.1\r\nHost: {host}\r\n\r\n")),
    Attack("1.4 MB asset, never read", "21.3 write timeout",
           never_read("/docs/assets/swagger-ui-bundle.js")),
    Attack("/openapi.json, never read", "21.3 write timeout",
           never_read("/openapi.json", copies=400)),
]
