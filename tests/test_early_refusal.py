"""A refusal answered before the upload was read still reaches the client (a live server).

An early answer (401, 503 at admission) on a connection whose body was not read makes the
kernel reset the connection when the server closes it, and the reset throws away the answer
on the client's side. Only a real socket shows this: TestClient has no kernel in between.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server import HOST, ServerProcess, audioserve

pytest_plugins = ("tests.clap_fixtures",)

BODY_BYTES = 16 * 2**20  # far more than loopback's socket buffers hold


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    settings = {"models": "clap", "api_key": "secret", "warmup": "false"}
    process = audioserve("early-refusal", clap_models_dir, settings,
                         log_dir=tmp_path_factory.mktemp("logs"), python=sys.executable)
    process.start(ready_timeout_s=240)
    try:
        yield process
    finally:
        process.stop()


def post_unread(port: int, body_bytes: int) -> bytes:
    """POST a big body without the API key, as a client would: send it all, then read."""
    head = (f"POST /classify HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {body_bytes}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(head)
        s.sendall(bytes(body_bytes))
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_refused_upload_gets_its_answer_not_a_reset(server: ServerProcess) -> None:
    for _ in range(3):  # a reset is timing-dependent: one lucky read must not pass
        answer = post_unread(server.port, BODY_BYTES)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"missing or wrong API key" in answer
