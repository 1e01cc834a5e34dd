"""A raw HTTP/1.1 client on h11 that keeps what httpx drops: a chunked answer's trailers.

    with socket.create_connection((host, port)) as sock:
        answer = exchange(sock, "POST", "/tts", body=b'{"text": "hi", "stream": true}')
        answer.trailers  # {"x-audioserve-sentences": "..."}
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import h11


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    """The answer's end arrived (for a chunked one: its last chunk, trailers included)."""


def _fields(items: Any) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in items}


def exchange(sock: socket.socket, method: str, target: str, body: bytes = b"",
             headers: dict[str, str] | None = None, conn: h11.Connection | None = None
             ) -> Answer:
    """One request and its answer; pass the same `conn` to send the next on the socket."""
    conn = conn if conn is not None else h11.Connection(h11.CLIENT)
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    fields = {"host": "test", "content-length": str(len(body)),
              "content-type": "application/json", **(headers or {})}
    sock.sendall(conn.send(h11.Request(method=method, target=target,
                                       headers=list(fields.items()))))
    sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    answer: Answer | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            if not data and answer is not None:  # closed before the end: incomplete
                answer.body = b"".join(chunks)
                return answer
            continue
        if isinstance(event, h11.Response):
            answer = Answer(event.status_code, _fields(event.headers))
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert answer is not None
            answer.body, answer.trailers = b"".join(chunks), _fields(event.headers)
            answer.complete = True
            return answer
        elif isinstance(event, h11.ConnectionClosed):
            assert answer is not None
            answer.body = b"".join(chunks)
            return answer


def post_json(host: str, port: int, target: str, payload: dict[str, Any]) -> Answer:
    """POST `payload` on a new connection; the answer with its trailers."""
    with socket.create_connection((host, port), timeout=120) as sock:
        return exchange(sock, "POST", target, json.dumps(payload).encode())
