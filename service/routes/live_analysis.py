"""`WS /v1/audio/analysis/stream`: live CLAP tags and speech emotion while audio arrives.

The protocol (every message, limits, close codes) is in service/live/protocol.py and
docs/live-analysis.md; a session's work in service/live/session.py.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, WebSocket

from service.live import access
from service.live.protocol import PROTOCOL, ErrorEvent
from service.live.session import LiveContext, LiveSession

log = logging.getLogger("audioserve.live")

router = APIRouter(tags=["live"])

PATH = "/v1/audio/analysis/stream"


@router.get(PATH, include_in_schema=False)
async def live_analysis_over_http() -> None:
    access.websocket_only(PATH, "docs/live-analysis.md")


@router.websocket(PATH)
async def live_analysis(websocket: WebSocket) -> None:
    """Stream audio in; CLAP window scores and emotion utterances come back as they are
    computed (see docs/live-analysis.md)."""
    app = websocket.app
    settings = app.state.settings
    metrics = app.state.metrics
    demo = any(app.state.pipelines[name].pack.manifest.demo
               for name in ("clap", "emotion2vec") if name in app.state.pipelines)
    if not await access.accept(websocket, settings, PROTOCOL, demo=demo):
        return
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
