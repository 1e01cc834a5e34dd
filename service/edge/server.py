"""The HTTP server: uvicorn's h11 protocol, with every connection state under a bound.

An HTTP/1.1 connection is always in one of a few states, and each has its bound here
(docs/hardening.md, "The HTTP edge", has the why and the figures):

- before a request's headers: the header deadline (408, then close), the raw size of the
  request line and headers and their field count (431);
- a request body the route never read, after its answer: the connection is closed, after
  a short linger that discards what still arrives (a request that declared a gigabyte and
  sent a byte at a time held its connection, and a connection-cap slot, for ever);
- between requests: the keep-alive timeout;
- a response the client does not read: the write timeout (no progress -> reset, the
  buffered answer freed);
- pipelined requests: h11 takes in one request at a time and stops reading until it is
  answered (httptools parsed 600,000 queued requests into memory);
- trailers of a chunked body: h11 parses them and uvicorn drops them, so they never reach
  the scope (under httptools they became headers: an `Authorization` trailer
  authenticated);
- trailers of a chunked *response*: ASGI's `http.response.trailers` extension, which
  uvicorn lacks, is offered on HTTP/1.1 requests (`TrailerCycle`): a streamed TTS answer
  states its pieces' spans after its audio (docs/speech-stream.md);
- a client that half-closes after a whole request still gets its answer (and one that
  closed is found gone by a probe, so its work stops);
- a WebSocket whose route is done but whose client does not read: uvicorn closes it with
  `transport.close()`, which waits for the unsent bytes to drain, so such a connection
  (and what it buffered both ways) was held for ever, the client blocked in its own send;
  the write timeout after the route returns resets it.

A cap on open connections answers the connection over it 503 + Retry-After. Body-reading
limits live in `service.edge.read_limits`, where the ASGI receive is.

`uvicorn_config` is the one place the server is configured: `python -m service` and the
live-socket tests use it alike.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import socket
import struct
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from service.errors import ABORT_EXTENSION, TRAILERS_EXTENSION, error_body, error_body_for
from service.settings import Settings

REFUSAL_DRAIN_S = 2.0
"""How long a connection refused at the cap may go on sending before it is closed."""

log = logging.getLogger("audioserve")
access_log = logging.getLogger("audioserve.access")


@dataclass(frozen=True)
class EdgeAnswer:
    """An error the edge answers itself, before any app runs (a malformed or too large
    head, a head that never came): like every other answer it carries a request id and
    gets an access line, so a client's report can be found in the log."""

    status: int
    reason: str
    code: str
    message: str

    def send(self, transport: asyncio.BaseTransport, client: str) -> None:
        request_id = uuid.uuid4().hex
        body = json.dumps(error_body(self.code, self.message, request_id=request_id)).encode()
        head = (f"HTTP/1.1 {self.status} {self.reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n"
                f"x-request-id: {request_id}\r\n\r\n")
        cast(asyncio.Transport, transport).write(head.encode("latin-1") + body)
        log_edge_answer(client, self.status, self.code, request_id)


def log_edge_answer(client: str, status: int, code: str, request_id: str) -> None:
    """The access line of an answer no app gave (method and path unknown, or not read)."""
    access_log.info('%s "- -" %d edge=%s id=%s', client, status, code, request_id)


def expects_continue(scope: Scope) -> bool:
    """Whether the client waits for `100 Continue` before sending its body: the server
    sends that on the first read of the body, so a refusal must not read it."""
    return any(name == b"expect" and value.lower() == b"100-continue"
               for name, value in scope["headers"])


class ConnectionRefusal:
    """The ASGI app a connection over the cap gets: its body read (briefly, so the answer
    is not lost to a reset), then 503 + Retry-After naming the limit."""

    def __init__(self, max_connections: int) -> None:
        self.message = (f"the server has {max_connections} open connections, its limit "
                        "(AUDIOSERVE_MAX_CONNECTIONS); retry shortly")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not expects_continue(scope):  # else no 100 Continue: its body never comes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFUSAL_DRAIN_S):
                    while (await receive()).get("more_body", False):
                        pass
        request_id = uuid.uuid4().hex
        body = json.dumps(error_body("too_many_connections", self.message,
                                     request_id=request_id)).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
            (b"connection", b"close"), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
        client = scope.get("client")
        log_edge_answer(f"{client[0]}:{client[1]}" if client else "-", 503,
                        "too_many_connections", request_id)


PEER_PROBE_S = 0.25
"""After a half-close, how often the socket is checked for the peer's reset."""
TCP_CLOSE = 7
"""Linux's TCP state of a connection the peer reset (`TCP_INFO`'s first byte)."""
WRITE_PROGRESS_BYTES = 64 * 1024
"""How much of a pending response must go out per write timeout to count as progress."""

log = logging.getLogger("audioserve.server")


FREE_PIECES = 1024
"""Pieces a request body or a WebSocket message may come in before their size counts."""
MIN_PIECE_BYTES = 512
"""Past FREE_PIECES, the least average size of those pieces. Each piece (a chunk of a
chunked body, a short read, a WebSocket continuation frame) costs the event loop a parse
whatever its size: a client sending 1-byte chunks at 160 KB/s kept the loop busy (other
clients' /healthz 2 s, /classify 10 s) while passing every rate limit."""


def too_fragmented(pieces: int, size: int) -> str | None:
    """Why a body or message in `pieces` pieces of `size` bytes in all is refused, or None."""
    if pieces <= FREE_PIECES or size >= pieces * MIN_PIECE_BYTES:
        return None
    return (f"{pieces} pieces averaging {size / pieces:.0f} bytes; past {FREE_PIECES} "
            f"pieces they must average {MIN_PIECE_BYTES} bytes or more (each piece costs "
            "the server a parse whatever its size)")


class HeadLimitedConnection(h11.Connection):
    """h11's server connection that also refuses (431) a request whose raw head (line
    ends and padding included) or field count is over the caps. h11 itself checks the
    size only while a head is incomplete, so a large head arriving in one read passed."""

    def __init__(self, max_head_bytes: int, max_fields: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.max_fields = max_fields
        self.error: h11.RemoteProtocolError | None = None
        self._pieces = 0
        self._body_bytes = 0

    def next_event(self) -> Any:
        before = len(self._receive_buffer)
        try:
            event = super().next_event()
            if type(event) is h11.Request:
                self._pieces = self._body_bytes = 0
                if (before - len(self._receive_buffer) > self.max_head_bytes
                        or len(event.headers) > self.max_fields):
                    raise h11.RemoteProtocolError("request head over the caps",
                                                  error_status_hint=431)
            elif type(event) is h11.Data:
                self._pieces += 1
                self._body_bytes += len(event.data)
                if (why := too_fragmented(self._pieces, self._body_bytes)) is not None:
                    raise h11.RemoteProtocolError(f"the body came in {why}")
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        return event


def chunked_framing(http_version: bytes | None, method: str, status: int,
                    headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether h11 sends this answer chunked, the only framing that carries trailers
    (h11's own rule: an HTTP/1.1 peer, a body, no Content-Length)."""
    return (http_version == b"1.1" and method != "HEAD" and status >= 200
            and status not in (204, 304)
            and not any(name.lower() == b"content-length" for name, _ in headers))


class TrailerCycle(RequestResponseCycle):
    """uvicorn's request/response cycle that also sends ASGI response trailers: after an
    answer started with `"trailers": True`, the last body message leaves the message open
    and the trailers message ends it (`0\r\n`, the fields, `\r\n`). An answer h11 does
    not chunk (HTTP/1.0, a Content-Length) ends without them: nowhere to put them."""

    _trailers_expected = False
    _chunked = False
    _body_done = False
    _trailers: list[tuple[bytes, bytes]]

    async def send_500_response(self) -> None:
        """What escaped every handler (logged by uvicorn with its traceback) is answered in
        the service's JSON error shape, not uvicorn's plain text."""
        await send_error(cast(Scope, self.scope), self.send, 500, "internal_error",
                         "an unexpected error; it is logged")

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            self._trailers_expected = bool(message.get("trailers", False))
            self._chunked = chunked_framing(
                self.conn.their_http_version, self.scope["method"], message["status"],
                list(message.get("headers", [])))
        elif (kind == "http.response.body" and self._trailers_expected
              and not message.get("more_body", False) and not self.response_complete):
            if self._body_done:
                raise RuntimeError("a second last body message before the trailers")
            await super().send(cast(Any, {**message, "more_body": True}))  # the end waits
            self._body_done, self._trailers = True, []
            return
        elif kind == "http.response.trailers" and self._body_done and not self.response_complete:
            await self._send_trailers(message)
            return
        await super().send(message)

    async def _send_trailers(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        self._trailers.extend(message.get("headers", []))
        if message.get("more_trailers", False):
            return
        self.response_complete = True
        self.message_event.set()
        self.transport.write(self.conn.send(h11.EndOfMessage(
            headers=self._trailers if self._chunked else [])))
        if self.conn.our_state is h11.MUST_CLOSE or not self.keep_alive:
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()
        self.on_response()


async def send_error(scope: Scope, send: Send, status: int, code: str, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole error answer in the service's JSON shape, the connection closed after it."""
    body = json.dumps(error_body_for(scope, status, code, message)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def cut_at_shutdown(app: ASGIApp) -> ASGIApp:
    """uvicorn cancels a request's task only when the server stops: past
    SHUTDOWN_TIMEOUT_S, or at a second Ctrl-C. Such a request gets a 503 the client may
    retry elsewhere (its answer begun: the connection dropped), and the log one line; it
    got a plain-text 500 and the log a traceback per request."""
    async def app_until_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        watched = _WatchedSend(send)
        try:
            await app(scope, receive, watched)
        except asyncio.CancelledError:
            log.warning("%s %s cut: the server stopped before it was done", scope["method"],
                        scope["path"])
            if watched.started:
                scope["extensions"][ABORT_EXTENSION]()
            else:
                await send_error(scope, send, 503, "shutting_down",
                                 "the server is stopping; retry the request (elsewhere)",
                                 [(b"retry-after", b"1")])
    return app_until_shutdown


class _WatchedSend:
    """An ASGI `send` that knows whether the answer has begun."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a timer on every connection state (module docstring);
    the limits are class attributes, set per server by `guarded_protocol`."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    max_header_bytes: ClassVar[int] = 65536
    max_header_fields: ClassVar[int] = 100
    write_timeout_s: ClassVar[float] = 30.0
    unread_body_linger_s: ClassVar[float] = 2.0
    refusal_app: ClassVar[ConnectionRefusal]
    timeout_answer: ClassVar[EdgeAnswer]
    too_big_answer: ClassVar[EdgeAnswer]
    _header_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _peer_timer: asyncio.TimerHandle | None = None
    _write_mark = 0
    _awaiting_head = False
    _lingering = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = HeadLimitedConnection(self.max_header_bytes, self.max_header_fields)
        self.app = cut_at_shutdown(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.app = self.refusal_app  # answered once its headers are in
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody reads: discarded until the close
        if self._awaiting_head:  # the first byte of the next request starts its deadline
            self._awaiting_head = False
            self._arm_header_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        if self.scope is not scope:  # a new request (its task has not started yet)
            self._disarm_header_timer()
            extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
            extensions[ABORT_EXTENSION] = self._reset
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # HTTP, not a WebSocket
                cycle.__class__ = TrailerCycle  # its task looks `send` up when it runs
                if self.scope["http_version"] == "1.1" and self.scope["method"] != "HEAD":
                    extensions[TRAILERS_EXTENSION] = {}

    def send_400_response(self, msg: str) -> None:
        """A malformed request (h11's error): 431 for a head over the caps, else 400, in
        this service's error shape; then close. Nothing is written once an answer began."""
        self._disarm_header_timer()
        cycle = self.cycle
        started = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive sees a disconnect, its sends drop
            cycle.message_event.set()
        if not started and not self.transport.is_closing():
            error = cast(HeadLimitedConnection, self.conn).error
            hint = error.error_status_hint if error is not None else 400
            answer = self.too_big_answer if hint == 431 else EdgeAnswer(
                400, "Bad Request", "malformed_request", f"malformed HTTP/1.1 request: {error}")
            answer.send(self.transport, self._peer())
        self.transport.close()

    def on_response_complete(self) -> None:
        if self.transport.is_closing():
            super().on_response_complete()
        elif self.conn.their_state is h11.SEND_BODY:  # answered before its body was read
            self.server_state.total_requests += 1
            self._linger()
        else:
            self._awaiting_head = True
            super().on_response_complete()  # may take in a pipelined request at once

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """A half-close after a whole request still gets its answer (then the close); an
        idle connection, a body cut short or a lingering one closes now.

        An EOF cannot tell a half-close from a client that closed and left, and work for
        a client that left must stop (a TTS generation, say). So the answer's head is
        probed for: an interim `100 Continue` (HTTP/1.1 clients must accept one) makes a
        closed peer's kernel answer with a reset, which the socket's TCP state shows at
        the next check; a half-closed peer just reads it."""
        cycle = self.cycle
        if (not self._lingering and cycle is not None and not cycle.response_complete
                and not cycle.more_body):
            cycle.keep_alive = False
            if not cycle.response_started:
                with contextlib.suppress(h11.LocalProtocolError):
                    self.transport.write(self.conn.send(h11.InformationalResponse(
                        status_code=100, headers=[], reason=b"Continue")))
            self._peer_timer = self.loop.call_later(PEER_PROBE_S, self._check_peer)
            return True
        return None

    def _check_peer(self) -> None:
        """After a half-close: drop the connection once the peer has reset it (it had
        closed, not half-closed), so the app sees the disconnect."""
        self._peer_timer = None
        if self.transport.is_closing() or self.cycle is None or self.cycle.response_complete:
            return
        sock = self.transport.get_extra_info("socket")
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except (OSError, AttributeError):
            return
        if state == TCP_CLOSE:
            self.transport.abort()
            return
        self._peer_timer = self.loop.call_later(PEER_PROBE_S, self._check_peer)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_mark = self.transport.get_write_buffer_size()
            self._write_timer = self.loop.call_later(self.write_timeout_s,
                                                     self._check_write_progress)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel("_write_timer")

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in ("_header_timer", "_write_timer", "_linger_timer", "_peer_timer"):
            self._cancel(timer)
        super().connection_lost(exc)

    def _linger(self) -> None:
        """Close after an answer whose request body was not read: the answer is sent and
        the write side shut; what the client still sends is discarded (a close with unread
        bytes would reset the connection and lose the answer) for at most the linger time."""
        self._lingering = True
        self._unset_keepalive_if_required()
        self._disarm_header_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(self.unread_body_linger_s,
                                                  self.transport.close)

    def _check_write_progress(self) -> None:
        self._write_timer = None
        size = self.transport.get_write_buffer_size()
        if size == 0:
            return
        if size > self._write_mark - WRITE_PROGRESS_BYTES:
            log.info("write timeout: %d bytes unsent for %g s; connection dropped", size,
                     self.write_timeout_s)
            self._reset()
            return
        self._write_mark = size
        self._write_timer = self.loop.call_later(self.write_timeout_s,
                                                 self._check_write_progress)

    def _reset(self) -> None:
        reset_connection(self.transport)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                      self._header_timeout)

    def _disarm_header_timer(self) -> None:
        self._cancel("_header_timer")

    def _cancel(self, name: str) -> None:
        timer: asyncio.TimerHandle | None = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.timeout_answer.send(self.transport, self._peer())
        self.transport.close()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "-"


def reset_connection(transport: asyncio.Transport) -> None:
    """Drop the connection with a TCP reset: the unsent answer is discarded by the kernel
    too (a plain close would leave it queued there, for a client that never reads, and the
    client would not learn it was cut)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, reset `write_timeout_s` after the route is done if the
    connection is still open then (its client does not read what is left to send), and
    with pings bounded.

    The app's sends wait while the transport's buffer is over its high-water mark, but
    uvicorn writes each pong as its ping is parsed, past that flow control: a client that
    floods pings and reads nothing grew the buffer by ~20 MB/s (0.9 GB in 40 s, never
    given back) and stalled the event loop. Here a pong is written only while the buffer
    has room; otherwise the latest one is kept and written when it drains (RFC 6455 5.5.3:
    a pong may answer only the most recent ping), and pings over `max_pings_per_s`
    (a token bucket holding one second's worth) close the connection 1008.

    What a client gets wrong (a bad frame, close code or opcode, invalid UTF-8 in a text
    message) closes its connection with the code for it and logs nothing but the access
    line: uvicorn logged a traceback for invalid UTF-8, and for any bad frame that came
    before the route accepted, and the route's next send after such a close raised
    (another traceback), so any client could fill the log at will. Once the server has
    failed a connection, the route's sends are a disconnect, as after the client left."""

    write_timeout_s: ClassVar[float]
    per_message_deflate: ClassVar[bool]
    max_pings_per_s: ClassVar[float]
    _lost = False
    _failed = False
    _owed_pong: bytes | None = None

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        # the cluster's ingress builds its uvicorn Config itself: the class decides here
        config.ws_per_message_deflate = self.per_message_deflate
        super().__init__(config, *args, **kwargs)
        self._ping_allowance = self._ping_burst()
        self._ping_counted_at = self.loop.time()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._write_owed_pong()

    def handle_cont(self, event: Any) -> None:
        super().handle_cont(event)
        pieces = len(self.frames)  # emptied once the message is whole
        if pieces > FREE_PIECES and pieces % 256 == 1 and not self.close_sent:
            why = too_fragmented(pieces, sum(len(f) for f in self.frames))
            if why is not None:
                self._close_for_policy(f"message in {why}")

    def handle_ping(self) -> None:
        # the parser answered every ping of this read at once: the first call takes them
        pong = b"".join(self.conn.data_to_send())
        if self.close_sent or self.transport.is_closing():
            return
        if not self._take_ping():
            self._owed_pong = None
            self._close_for_policy("too many pings (AUDIOSERVE_WS_MAX_PINGS_PER_S)")
            return
        if pong:
            self._owed_pong = pong  # written after the read, if the buffer has room

    def _close_for_policy(self, reason: str) -> None:
        self._fail(1008, reason)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            why = utf8_error(self.frames)
            if why is not None:
                self.frames = []
                self._fail(1007, f"invalid UTF-8 in a text message ({why})")
                return
        super().send_receive_event_to_app()

    def _fail(self, code: int, reason: str) -> None:
        """Close `code` now for the client's fault: the app hears a disconnect, the close
        frame goes out (before the handshake is answered there is none to send)."""
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason[:120])  # a close frame's reason: 123 bytes
        self.handle_parser_exception()

    def handle_parser_exception(self) -> None:
        """uvicorn's close after a bad frame, which asserted (a traceback) when the frame
        came before the route accepted: no close frame can precede the 101, so then the
        connection is dropped."""
        self._mark_failed()
        if self.conn.close_sent is not None:
            super().handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.transport.close()

    def keepalive_timeout(self) -> None:
        self._mark_failed()  # uvicorn closes it 1011, a failure like the others
        super().keepalive_timeout()

    def _mark_failed(self) -> None:
        """From now on the route's sends are a disconnect; those waiting for the buffer to
        drain are let go too: a client that reads nothing would hold them (and, the route
        never ending, its connection) for ever."""
        self._failed = True
        self.writable.set()

    async def send(self, message: Any) -> None:
        await self.writable.wait()
        if self._failed and message["type"] in ("websocket.send", "websocket.close"):
            if message["type"] == "websocket.send":  # uvicorn: a RuntimeError, a traceback
                raise ClientDisconnected()
            return  # closed already
        await super().send(message)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_owed_pong()

    def _write_owed_pong(self) -> None:
        if (self._owed_pong is not None and self.writable.is_set()
                and self.handshake_complete and not self.transport.is_closing()):
            self.transport.write(self._owed_pong)
            self._owed_pong = None

    def _ping_burst(self) -> float:
        """The bucket holds one second's worth, and at least one ping: under 1 ping a
        second a full bucket under 1 would refuse every ping."""
        return max(1.0, self.max_pings_per_s)

    def _take_ping(self) -> bool:
        now = self.loop.time()
        rate = self.max_pings_per_s
        refill = (now - self._ping_counted_at) * rate
        self._ping_allowance = min(self._ping_burst(), self._ping_allowance + refill)
        self._ping_counted_at = now
        if self._ping_allowance < 1:
            return False
        self._ping_allowance -= 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        super().connection_lost(exc)

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self._lost:
            self.loop.call_later(self.write_timeout_s, self._reset_if_open)

    def _reset_if_open(self) -> None:
        if not self._lost:
            log.info("a WebSocket left unread after its route ended: reset")
            reset_connection(self.transport)


def utf8_error(pieces: list[bytes]) -> str | None:
    """Why a message in `pieces` is not UTF-8, or None (checked piece by piece, not joined)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for piece in pieces:
            decoder.decode(piece)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return exc.reason
    return None


def guarded_protocol(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class for one server, with the settings' limits."""
    timeout_answer = EdgeAnswer(
        408, "Request Timeout", "header_timeout",
        f"the request line and headers did not arrive within {settings.header_timeout_s:g} s "
        "(AUDIOSERVE_HEADER_TIMEOUT_S)")
    too_big_answer = EdgeAnswer(
        431, "Request Header Fields Too Large", "headers_too_large",
        f"the request line and headers exceed {settings.max_header_bytes} bytes "
        f"(AUDIOSERVE_MAX_HEADER_BYTES) or {settings.max_header_fields} fields "
        "(AUDIOSERVE_MAX_HEADER_FIELDS)")
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "max_header_bytes": settings.max_header_bytes,
        "max_header_fields": settings.max_header_fields,
        "write_timeout_s": settings.write_timeout_s,
        "unread_body_linger_s": settings.unread_body_linger_s,
        "too_big_answer": too_big_answer,
        "refusal_app": ConnectionRefusal(settings.max_connections),
        "timeout_answer": timeout_answer,
    })


def guarded_websocket_protocol(settings: Settings) -> type[GuardedWebSocketProtocol]:
    """The WebSocket protocol class for one server, with the settings' write timeout,
    compression and ping rate."""
    return type("GuardedWebSocketProtocol", (GuardedWebSocketProtocol,),
                {"write_timeout_s": settings.write_timeout_s,
                 "per_message_deflate": settings.ws_compression,
                 "max_pings_per_s": settings.ws_max_pings_per_s})


PROCESS_PROTOCOL: type[GuardedProtocol] | None = None
"""This process's protocol when uvicorn is started by someone else (`serve_auto_as_guarded`)."""
PROCESS_WS_PROTOCOL: type[GuardedWebSocketProtocol] | None = None
"""Its WebSocket protocol, likewise."""


def serve_auto_as_guarded(settings: Settings) -> None:
    """Make uvicorn's `http="auto"` mean this service's protocol, in this process. Ray Serve
    starts its ingress replicas' uvicorn itself, with no way to name a protocol, and "auto"
    is httptools: behind HAProxy the cluster's ingress would take trailers as headers and
    hold unread bodies as one process did before. `ws="auto"` likewise means the guarded
    WebSocket protocol. Called before that server starts."""
    global PROCESS_PROTOCOL, PROCESS_WS_PROTOCOL
    PROCESS_PROTOCOL = guarded_protocol(settings)
    PROCESS_WS_PROTOCOL = guarded_websocket_protocol(settings)
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:PROCESS_PROTOCOL"
    uvicorn.config.WS_PROTOCOLS["auto"] = f"{__name__}:PROCESS_WS_PROTOCOL"


def uvicorn_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The server's configuration from the settings (every limit named there)."""
    trusted = settings.forwarded_allow_ips.strip()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # RequestContextMiddleware logs each request with its id
        "http": guarded_protocol(settings),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "lifespan": "on",
        "backlog": max(2048, settings.max_connections),
        # larger WebSocket messages are refused (1009) before they are read; up to it the
        # live route answers an oversized frame with an error event (service/live)
        "ws_max_size": 2 * max(settings.live_max_frame_bytes,
                               settings.tts_ws_max_message_bytes),
        "ws": guarded_websocket_protocol(settings),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def bound_socket(host: str, port: int = 0) -> socket.socket:
    """A listening-ready socket (port 0: a free one), for servers started in tests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class ServiceServer(uvicorn.Server):
    """uvicorn's server that says where the page and the API docs are once it listens, and
    stops when the app's packs fail to load (`failure` says why): a process that can never
    be ready must exit, so an orchestrator shows a crash, not a live process that is never
    ready."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.app = app
        self.failure: str | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers and self.servers[0].sockets:
            url = base_url(*self.servers[0].sockets[0].getsockname()[:2])
            page = f"web page {url}/ , " if self.app.state.settings.ui else ""
            log.info("audioserve on %s: %sAPI docs %s/docs , readiness %s/readyz", url, page,
                     url, url)

    async def on_tick(self, counter: int) -> bool:
        loader = getattr(self.app.state, "loader", None)
        failure = loader.failure if loader is not None else None
        if failure is not None:
            self.failure = failure
            log.critical("stopping: the server cannot serve what it was asked to (%s)", failure)
            return True
        return await super().on_tick(counter)


def base_url(host: str, port: int) -> str:
    """The URL a user on this machine opens (a wildcard address is reached as localhost)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"
