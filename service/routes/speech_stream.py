"""`WS /v1/audio/speech/stream`: text in as an LLM writes it, speech out sentence by
sentence, with barge-in (vLLM-Omni's protocol plus ours: service/live/speech_protocol.py,
docs/speech-stream.md). Who may connect is decided as for the live-analysis socket
(service/live/access.py: API key in a header or a `bearer.<key>` subprotocol, allowed
origins)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from service.live import access
from service.live.protocol import PROTOCOL
from service.live.speech_protocol import ErrorEvent
from service.live.speech_session import SpeechSession

router = APIRouter(tags=["tts"])

PATH = "/v1/audio/speech/stream"


@router.get(PATH, include_in_schema=False)
async def speech_stream_over_http() -> None:
    access.websocket_only(PATH, "docs/speech-stream.md")


@router.websocket(PATH)
async def speech_stream(websocket: WebSocket) -> None:
    app = websocket.app
    settings = app.state.settings
    metrics = app.state.metrics
    pipeline = app.state.pipelines.get("chattts")
    demo = pipeline is not None and pipeline.pack.manifest.demo
    if not await access.accept(websocket, settings, PROTOCOL, demo=demo):
        return
    sessions: dict[str, int] = app.state.speech_sessions
    error = None
    if pipeline is None:
        error = ErrorEvent(code="model_not_loaded", message="the chattts model is not loaded")
    elif sessions["open"] >= settings.tts_ws_max_sessions:
        error = ErrorEvent(code="too_many_sessions",
                           message=f"{sessions['open']} speech sessions are open, the limit "
                                   "(AUDIOSERVE_TTS_WS_MAX_SESSIONS); retry later")
    if error is not None:
        metrics.tts_ws_closed.labels(error.code).inc()
        await websocket.send_text(error.model_dump_json())
        await websocket.close(4503 if error.code == "model_not_loaded" else 1013)
        return
    sessions["open"] += 1
    metrics.tts_ws_sessions.set(sessions["open"])
    try:
        session = SpeechSession(websocket, settings, metrics, pipeline)
        await session.run()
        metrics.tts_ws_closed.labels(session.end_reason).inc()
    finally:
        sessions["open"] -= 1
        metrics.tts_ws_sessions.set(sessions["open"])
