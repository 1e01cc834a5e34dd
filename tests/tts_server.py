"""The real app served by uvicorn on 127.0.0.1 (a free port) in a thread, for tests that
need a real HTTP connection: chunked streaming, a client closing the socket, the openai
client. `with serve_app(models_dir=..., ...) as server: httpx.get(server.url + ...)`."""

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
from service.settings import Settings


@dataclass(frozen=True)
class RunningServer:
    url: str
    app: FastAPI


@contextmanager
def serve_app(**overrides: Any) -> Iterator[RunningServer]:
    settings = Settings(_env_file=None, load_in_background=False, **overrides)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the log)")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
