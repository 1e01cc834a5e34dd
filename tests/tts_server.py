"""The real app served by uvicorn on 127.0.0.1 (a free port) in a thread, for tests that
need a real HTTP connection: chunked streaming, a client closing the socket, slow
clients, the openai client. The server is configured exactly as `python -m service`
configures it (service.edge.server.uvicorn_config).
`with serve_app(models_dir=..., ...) as server: httpx.get(server.url + ...)`; `serve_asgi`
serves a bare ASGI app the same way, for tests of the edge alone."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.edge.server import bound_socket, uvicorn_config
from service.settings import Settings


@dataclass(frozen=True)
class RunningServer:
    url: str
    app: FastAPI
    host: str
    port: int
    server: uvicorn.Server

    @property
    def connections(self) -> int:
        """Connections the server holds open now."""
        return len(self.server.server_state.connections)


@contextmanager
def serve_app(send_buffer_bytes: int | None = None, **overrides: Any
              ) -> Iterator[RunningServer]:
    """`send_buffer_bytes`: SO_SNDBUF of the listening socket, which accepted connections
    inherit (a small one makes a client that does not read show at once)."""
    settings = Settings(_env_file=None, load_in_background=False, **overrides)
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_level="warning")
    with _serving(app, config, send_buffer_bytes) as server:
        yield server


@contextmanager
def serve_asgi(app: Any, send_buffer_bytes: int | None = None,
               uvicorn_options: dict[str, Any] | None = None, **overrides: Any
               ) -> Iterator[RunningServer]:
    """A bare ASGI app behind the service's own server configuration (`uvicorn_options`
    over it)."""
    settings = Settings(_env_file=None, **overrides)
    config = uvicorn_config(app, settings, **{"log_level": "warning", **(uvicorn_options or {})})
    with _serving(app, config, send_buffer_bytes) as server:
        yield server


@contextmanager
def _serving(app: Any, config: uvicorn.Config, send_buffer_bytes: int | None
             ) -> Iterator[RunningServer]:
    sock = bound_socket("127.0.0.1")
    if send_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    port = sock.getsockname()[1]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the log)")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app, "127.0.0.1", port, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
