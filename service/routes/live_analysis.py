"""`WS /v1/audio/analysis/stream`: live CLAP tags and speech emotion while audio arrives.

The protocol (every message, limits, close codes) is in service/live/protocol.py and
docs/live-analysis.md; a session's work in service/live/session.py.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse

from service.errors import error_body
from service.live import access
from service.live.protocol import PROTOCOL, ErrorEvent
from service.live.session import LiveContext, LiveSession

log = logging.getLogger("audioserve.live")

router = APIRouter(tags=["live"])

PATH = "/v1/audio/analysis/stream"


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the handshake: an HTTP answer where the server can send one, else 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error_body(code, message), status))
    else:
        await websocket.close(1008, reason=message[:120])


@router.websocket(PATH)
async def live_analysis(websocket: WebSocket) -> None:
    """Stream audio in; CLAP window scores and emotion utterances come back as they are
    computed (see docs/live-analysis.md)."""
    app = websocket.app
    settings = app.state.settings
    metrics = app.state.metrics
    refusal = access.key_error(websocket, settings)
    if refusal is not None:
        await _deny(websocket, 401, "unauthorized", refusal)
        return
    refusal = access.origin_error(websocket, settings)
    if refusal is not None:
        await _deny(websocket, 403, "forbidden", refusal)
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    streams: dict[str, int] = app.state.live_streams
    if streams["open"] >= settings.live_max_streams:
        error = ErrorEvent(code="too_many_streams",
                           message=f"{streams['open']} live streams are open, the limit "
                                   "(AUDIOSERVE_LIVE_MAX_STREAMS); retry later")
        metrics.live_closed.labels("too_many_streams").inc()
        await websocket.send_text(json.dumps(error.model_dump()))
        await websocket.close(1013)
        return
    streams["open"] += 1
    metrics.live_streams.set(streams["open"])
    try:
        ctx = LiveContext(settings=settings, metrics=metrics, cpu=app.state.cpu,
                          pipelines=app.state.pipelines, gates=app.state.admission)
        session = LiveSession(websocket, ctx)
        await session.run()
        metrics.live_closed.labels(session.end_reason).inc()
    finally:
        streams["open"] -= 1
        metrics.live_streams.set(streams["open"])
