"""Who may open a live stream: the API key and the page's origin, checked before accept.
(The origin rule, `origin_refusal`, also holds for the HTTP routes' unsafe methods:
service.edge.middleware.OriginMiddleware.)

The key is checked as the HTTP routes check it (service.edge.middleware.AuthMiddleware:
constant time, `Authorization: Bearer <key>`). Browsers cannot set headers on a WebSocket,
so the key may instead be offered as a subprotocol, `bearer.<key>`, beside
`audioserve.live.v1`: it travels in the `Sec-WebSocket-Protocol` header, which no access
log records (a `?key=` query would be logged with the path), and is never echoed back (the
server selects `audioserve.live.v1`). `Origin`, which browsers always send, must be one of
AUDIOSERVE_LIVE_ALLOWED_ORIGINS (`*`: any), or by default the server's own origin;
clients that send no Origin (not browsers) pass that check.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from service.errors import UpgradeRequired, error_body
from service.live.protocol import PROTOCOL
from service.settings import Settings

KEY_PREFIX = "bearer."


def _header(websocket: WebSocket, name: str) -> str | None:
    return websocket.headers.get(name)


def offered_key(websocket: WebSocket) -> str | None:
    scheme, _, token = (_header(websocket, "authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_PREFIX):
            return protocol[len(KEY_PREFIX):]
    return None


def key_error(websocket: WebSocket, settings: Settings) -> str | None:
    """Why the stream may not open (None: it may)."""
    if settings.api_key is None:
        return None
    offered = offered_key(websocket)
    expected = settings.api_key.get_secret_value().encode()
    if offered is not None and hmac.compare_digest(offered.encode("latin-1", "replace"),
                                                   expected):
        return None
    return ("missing or wrong API key: send `Authorization: Bearer <key>`, or (browsers) "
            "offer the subprotocols `audioserve.live.v1` and `bearer.<key>`")


def origin_refusal(origin: str | None, host: str | None, settings: Settings,
                   action: str) -> str | None:
    """Why a page of `origin` may not `action` (None: it may). Browsers always send
    Origin; clients that send none (not browsers) pass."""
    if origin is None:
        return None
    allowed = [o.strip().rstrip("/") for o in settings.live_allowed_origins.split(",")
               if o.strip()]
    if "*" in allowed or origin.rstrip("/") in allowed:
        return None
    if not allowed and host is not None and origin.split("://", 1)[-1] == host:
        return None
    return (f"origin {origin[:100]!r} may not {action}; allowed: "
            f"{', '.join(allowed) or 'this server only'} (AUDIOSERVE_LIVE_ALLOWED_ORIGINS)")


def origin_error(websocket: WebSocket, settings: Settings) -> str | None:
    return origin_refusal(_header(websocket, "origin"), _header(websocket, "host"), settings,
                          "open live streams")


def websocket_only(path: str, doc: str) -> NoReturn:
    """The answer to plain HTTP at a WebSocket route: 426 saying how to connect (a bare
    404 had said the route did not exist)."""
    raise UpgradeRequired(
        f"{path} is a WebSocket route: connect with ws:// or wss:// (a WebSocket client, "
        f"subprotocol `{PROTOCOL}`); see {doc}",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"})


async def accept(websocket: WebSocket, settings: Settings, protocol: str,
                 demo: bool = False) -> bool:
    """Accept the handshake (selecting `protocol` where it was offered) if the key and the
    origin pass; else refuse it (401 / 403) and return False. `demo`: a model the route
    serves is a random-weight demo pack, said as the HTTP answers say it
    (`X-Audioserve-Demo: true`)."""
    for status, code, refusal in ((401, "unauthorized", key_error(websocket, settings)),
                                  (403, "forbidden", origin_error(websocket, settings))):
        if refusal is not None:
            await _deny(websocket, status, code, refusal)
            return False
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=protocol if protocol in offered else None,
                           headers=[(b"x-audioserve-demo", b"true")] if demo else None)
    return True


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the handshake: an HTTP answer where the server can send one, else 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error_body(code, message), status))
    else:
        await websocket.close(1008, reason=message[:120])
