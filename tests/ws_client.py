"""A raw WebSocket client on a plain socket, for what a library client will not send:
floods of pings, tiny fragments, bad frames, frames before the handshake is answered.

    ws = RawSocket(server)            # handshake done, 101 checked
    ws.sock.sendall(frame(TEXT, b"\\xff"))
    close_code(ws)                    # 1007
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PATH = "/v1/audio/analysis/stream"


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
          masked: bool = True) -> bytes:
    """A client frame, masked as clients must unless `masked` is False; `rsv`: the three
    reserved bits (0-7)."""
    mask = os.urandom(4) if masked else b""
    n = len(payload)
    size = bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    return bytes([first, size[0] | (0x80 if masked else 0)]) + size[1:] + mask + body


class RawSocket:
    """A connection that has sent its opening handshake; with `answered` (the default)
    the server's 101 has been read too."""

    def __init__(self, server: Any, rcvbuf: int | None = None, path: str = PATH,
                 answered: bool = True) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(60)
        self.sock.connect((server.host, server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        if answered:
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

    def rest(self) -> bytes:
        """Every byte the server still sends, until it closes the connection."""
        data, self.buffer = self.buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data


def close_frame(ws: RawSocket) -> tuple[int, bytes]:
    """The server's close frame, as (code, reason), read up to the end of the connection."""
    closes = [payload for opcode, payload in ws.frames() if opcode == CLOSE]
    assert closes, "no close frame"
    return struct.unpack(">H", closes[0][:2])[0], closes[0][2:]
