"""WS /v1/audio/analysis/stream under bad and hostile clients, over a real socket: the API
key and origins, bad config, bad audio, bad frames, every limit (streams, frame size,
duration, idle, pending work, unread results) -> an `error` event and its close code
(or a refused handshake), never a crash; and what /metrics says about it."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from service.live.protocol import PROTOCOL
from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir, speech_files  # noqa: F401
from tests.live_fixtures import (  # noqa: F401  (fixtures)
    LABELS,
    Transcript,
    frames,
    live_models_dir,
    metric,
    open_stream,
    read_all,
    speech_stream,
    to_rate,
    ws_url,
)
from tests.tts_server import RunningServer, serve_app

KEY = "s3cret-key"
ORIGIN = "https://app.example"
FRAME_LIMIT = 128 * 1024
PCM8K = {"format": "pcm_s16le", "sample_rate": 8000}
AUTH = {"additional_headers": {"Authorization": f"Bearer {KEY}"}}


@pytest.fixture(scope="module")
def server(live_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=live_models_dir, api_key=KEY, live_allowed_origins=ORIGIN,
                   live_max_frame_bytes=FRAME_LIMIT, live_max_streams=2, live_max_pending=1,
                   live_idle_timeout_s=2.0, live_config_timeout_s=2.0,
                   live_max_stream_seconds=30.0, live_max_ahead_s=1e6,
                   emotion_max_seconds=60.0) as s:
        yield s


def _tone(seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def _matroska(codec: str, rate: int, layout: str, planes: np.ndarray) -> bytes:
    """One Matroska audio track (what `webm` input is demuxed as) of `planes`
    (channels, samples), as PyAV encodes it."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = {np.dtype(np.int16): "s16", np.dtype(np.float32): "flt"}[planes.dtype]
        planar = codec == "wavpack"
        frame = av.AudioFrame.from_ndarray(
            planes if planar else planes.T.reshape(1, -1),
            format=fmt + "p" if planar else fmt, layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def _wavpack_rate_change(first: int, then: int) -> bytes:
    """WavPack in Matroska that changes its rate midway (each WavPack block says its own
    rate): 1 s of a tone at `first` Hz, then 0.5 s at `then` Hz, in one track."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream("wavpack", rate=first, layout="mono")
        pts = 0
        for rate, seconds in ((first, 1.0), (then, 0.5)):
            codec = av.CodecContext.create("wavpack", "w")
            codec.sample_rate, codec.layout, codec.format = rate, "mono", "s16p"
            frame = av.AudioFrame.from_ndarray(
                np.frombuffer(_tone(seconds, rate), "<i2")[None, :], format="s16p",
                layout="mono")
            frame.sample_rate = rate
            for packet in [*codec.encode(frame), *codec.encode(None)]:
                packet.stream = stream
                packet.pts = packet.dts = pts
                pts += packet.duration or 0
                container.mux(packet)
    return buf.getvalue()


def _session(server: RunningServer, messages: list[str | bytes], **kwargs: Any) -> Transcript:
    with open_stream(server, **{**AUTH, **kwargs}) as ws:
        try:
            for message in messages:
                ws.send(message)
        except ConnectionClosed:
            pass
        return read_all(ws)


def _config(**parts: Any) -> str:
    return json.dumps({"type": "session.config", "input": PCM8K, **parts})


def _error(t: Transcript) -> dict[str, Any]:
    errors = t.of("error")
    assert len(errors) == 1, t.events
    return errors[0]


# -- who may connect ----------------------------------------------------------------------

def test_key_required_in_a_header_or_a_subprotocol(server: RunningServer) -> None:
    for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}},
                   {"subprotocols": [PROTOCOL, "bearer.wrong"]}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server), open_timeout=30, **kwargs)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 401
        assert b"API key" in refused.value.response.body
    with connect(ws_url(server), subprotocols=[PROTOCOL, f"bearer.{KEY}"],  # type: ignore[list-item]
                 open_timeout=30) as ws:
        assert ws.subprotocol == PROTOCOL  # the key is never echoed back
        ws.send(_config(classify={"labels": LABELS}))
        ws.send(json.dumps({"type": "session.close"}))
        t = read_all(ws)
    assert [e["type"] for e in t.events] == ["session.created", "session.done"]
    assert t.close_code == 1000


def test_origins(server: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_stream(server, origin="https://evil.example", **AUTH)
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["x-request-id"]  # a refusal has its id too
    t = _session(server, [_config(classify={"labels": LABELS}),
                          json.dumps({"type": "session.close"})], origin=ORIGIN)
    assert t.close_code == 1000


# -- bad messages -------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "code", "close", "says"), [
    ("{not json", "invalid_message", 4400, "JSON"),
    (json.dumps({"type": "hello"}), "invalid_message", 4400, "session.config"),
    (json.dumps({"type": "input.done"}), "invalid_message", 4400, "first message"),
    (b"\x00\x01", "invalid_message", 4400, "session.config"),
    (_config(), "invalid_config", 4400, "nothing to do"),
    (_config(classify={"labels": []}), "invalid_message", 4400, "classify.labels"),
    (_config(classify={"labels": ["a", "a"]}), "invalid_config", 4400, "a"),
    (_config(classify={"labels": LABELS, "hop_s": 0.1}), "invalid_config", 4400,
     "AUDIOSERVE_LIVE_MIN_HOP_S"),
    (_config(classify={"labels": LABELS, "prompt_template": "no label"}), "invalid_config",
     4400, "{label}"),
    (_config(classify={"labels": LABELS}, extra=1), "invalid_message", 4400, "extra"),
    (json.dumps({"type": "session.config", "input": {"format": "mp3", "sample_rate": 8000},
                 "emotion": {}}), "invalid_message", 4400, "pcm_s16le"),
    (json.dumps({"type": "session.config", "input": {"format": "pcm_s16le"},
                 "emotion": {}}), "invalid_config", 4400, "sample_rate"),
    (_config(emotion={"max_utterance_s": 100.0}), "invalid_config", 4400,
     "AUDIOSERVE_EMOTION_MAX_SECONDS"),
    (_config(emotion={"partial_every_s": 0.1}), "invalid_message", 4400,
     "emotion.partial_every_s"),
    (_config(emotion={"partial_every_s": "often"}), "invalid_message", 4400,
     "emotion.partial_every_s"),
    (_config(emotion={"partial_every_s": 30.0}), "invalid_config", 4400, "max_utterance_s"),
    (_config(classify={"labels": LABELS, "hop_s": float("nan")}), "invalid_message", 4400,
     "classify.hop_s: Input should be a finite number"),
    (_config(classify={"labels": ["a", "b\udc00"]}), "invalid_message", 4400,
     "classify.labels[1] holds a lone UTF-16 surrogate"),
])
def test_bad_config(server: RunningServer, first: str | bytes, code: str, close: int,
                    says: str) -> None:
    t = _session(server, [first])
    error = _error(t)
    assert (error["code"], t.close_code) == (code, close)
    assert says in error["message"]


def test_config_twice_and_frame_after_done(server: RunningServer) -> None:
    config = _config(classify={"labels": LABELS})
    t = _session(server, [config, config])
    assert (_error(t)["code"], t.close_code) == ("invalid_message", 4400)


@pytest.mark.parametrize(("config", "audio", "says"), [
    ({"format": "pcm_f32le", "sample_rate": 8000},
     np.array([0.1, np.nan], "<f4").tobytes(), "NaN"),
    ({"format": "pcm_f32le", "sample_rate": 8000},
     np.array([0.1, 1e9], "<f4").tobytes(), "full scale"),
    ({"format": "webm"}, b"\x1aE\xdf\xa3 not really webm" * 50, "webm"),
    ({"format": "ogg"}, b"OggS garbage" * 100, "ogg"),
    ({"format": "pcm_s16le", "sample_rate": 8000}, b"\x00\x01\x02", "sample frame"),
    ({"format": "webm"}, _matroska("pcm_f32le", 8000, "mono",
                                   np.full((1, 800), np.nan, np.float32)), "NaN"),
    ({"format": "webm"}, _matroska("pcm_f32le", 8000, "stereo",
                                   np.full((2, 800), 1e30, np.float32)), "full scale"),
    ({"format": "webm"}, _matroska("pcm_s16le", 8000, "mono", np.zeros((1, 800), np.int16)
                                   ).replace(b"A_PCM/INT/LIT", b"A_XYZ/ABC/DEF"),
     "FFmpeg cannot decode"),  # a codec id FFmpeg has no decoder for
])
def test_bad_audio(server: RunningServer, config: dict[str, Any], audio: bytes,
                   says: str) -> None:
    messages: list[str | bytes] = [
        json.dumps({"type": "session.config", "input": config, "emotion": {}}), audio,
        json.dumps({"type": "input.done"})]
    t = _session(server, messages)
    error = _error(t)
    assert (error["code"], t.close_code) == ("unsupported_audio", 1003), error
    assert says in error["message"]


@pytest.mark.parametrize(("audio", "says"), [
    (_matroska("wavpack", 384_000, "mono", np.zeros((1, 96_000), np.int16)),
     ["384000 Hz", "8000-192000 Hz"]),
    (_matroska("pcm_s16le", 16_000, "hexadecagonal", np.zeros((16, 1600), np.int16)),
     ["16 channels", "1-8"]),
    (_wavpack_rate_change(16_000, 384_000), ["384000 Hz", "8000-192000 Hz"]),
    (_wavpack_rate_change(16_000, 48_000), ["changed its sample rate from 16000 to 48000"]),
], ids=["384kHz", "16-channels", "to-384kHz-midway", "to-48kHz-midway"])
def test_encoded_input_is_held_to_the_pcm_bounds(server: RunningServer, audio: bytes,
                                                 says: list[str]) -> None:
    """A WebM stream's rate and channels (its header's, then each frame's) are held to
    what a PCM config may say: refused before any window is cut at that rate (a 10 s
    window of a 16 MHz stream is 640 MB), naming what was found and what is allowed."""
    assert len(audio) <= FRAME_LIMIT
    t = _session(server, [
        json.dumps({"type": "session.config", "input": {"format": "webm"},
                    "classify": {"labels": LABELS, "hop_s": 0.5}}),
        audio, json.dumps({"type": "input.done"})])
    error = _error(t)
    assert (error["code"], t.close_code) == ("unsupported_audio", 1003), error
    assert all(part in error["message"] for part in says), error["message"]
    windows = [e["end_s"] for e in t.of("classify.window") + t.of("skipped")]
    assert all(end <= 1.0 for end in windows), windows  # none cut after the change


def test_frame_too_large(server: RunningServer) -> None:
    config = _config(classify={"labels": LABELS})
    t = _session(server, [config, b"\x00" * (FRAME_LIMIT + 2)])
    error = _error(t)
    assert (error["code"], t.close_code) == ("frame_too_large", 1009)
    assert "AUDIOSERVE_LIVE_MAX_FRAME_BYTES" in error["message"]
    # beyond twice the limit the server's WebSocket layer refuses it before reading it
    t = _session(server, [config, b"\x00" * (2 * FRAME_LIMIT + 2)])
    assert t.close_code == 1009


# -- limits -------------------------------------------------------------------------------

def test_too_many_streams(server: RunningServer) -> None:
    config = _config(classify={"labels": LABELS})
    with open_stream(server, **AUTH) as a, open_stream(server, **AUTH) as b:
        for ws in (a, b):
            ws.send(config)
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        t = _session(server, [config])
        assert (_error(t)["code"], t.close_code) == ("too_many_streams", 1013)
        for ws in (a, b):
            ws.send(json.dumps({"type": "session.close"}))
            assert read_all(ws).close_code == 1000
    assert _session(server, [config, json.dumps({"type": "session.close"})]).close_code == 1000


def test_idle_and_config_timeouts(server: RunningServer) -> None:
    t = _session(server, [])
    assert (_error(t)["code"], t.close_code) == ("config_timeout", 1008)
    t = _session(server, [_config(classify={"labels": LABELS}), _tone(0.5)])
    assert (_error(t)["code"], t.close_code) == ("idle_timeout", 1008)
    assert t.events[0]["type"] == "session.created"


def test_stream_too_long(server: RunningServer) -> None:
    frames = [_tone(5.0)] * 7  # 35 s of audio; the limit is 30 s
    t = _session(server, [_config(emotion={}), *frames])
    error = _error(t)
    assert (error["code"], t.close_code) == ("stream_too_long", 1008)
    assert "AUDIOSERVE_LIVE_MAX_STREAM_SECONDS" in error["message"]


def test_pending_windows_beyond_the_bound_are_skipped_and_said(server: RunningServer) -> None:
    """max_pending=1: 5 s in one frame completes 9-10 windows (hop 0.5 s) at once; one is
    computed, the others are skipped with `behind` -- every window accounted for."""
    before = metric(server, "audioserve_live_skipped_total", reason="behind",
                     task="classify")
    t = _session(server, [_config(classify={"labels": LABELS, "hop_s": 0.5}), _tone(5.0),
                          json.dumps({"type": "input.done"})])
    assert t.close_code == 1000, t.events
    windows = {e["index"] for e in t.of("classify.window")}
    skipped = t.of("skipped")
    assert skipped and all(s["reason"] == "behind" and s["task"] == "classify"
                           for s in skipped)
    assert "AUDIOSERVE_LIVE_MAX_PENDING" in skipped[0]["message"]
    indices = windows | {s["index"] for s in skipped}
    assert indices == set(range(len(indices))) and not windows & {s["index"] for s in skipped}
    done = t.of("session.done")[0]
    assert (done["windows"], done["skipped"]) == (len(windows), len(skipped))
    after = metric(server, "audioserve_live_skipped_total", reason="behind",
                     task="classify")
    assert after - before == len(skipped)


def test_partials_give_way_to_finals(server: RunningServer,
                                     speech_files: list[Path]) -> None:  # noqa: F811
    """max_pending=1: one frame of speech (its utterance still open at the end) completes
    windows and makes a partial due in the same step; the first window holds the one
    place, so the partial is skipped (`behind`), counted in session.done and /metrics,
    and said in no event."""
    outcomes = ("sent", "coalesced", "behind", "refused", "cancelled")
    before = {o: metric(server, "audioserve_live_partials_total", outcome=o)
              for o in outcomes}
    speech = to_rate(speech_stream(speech_files, gap_s=0.0, count=1), 8000)
    assert len(speech) * 2 <= FRAME_LIMIT
    t = _session(server, [_config(classify={"labels": LABELS, "hop_s": 0.5},
                                  emotion={"min_silence_ms": 2000, "partial_every_s": 0.5}),
                          speech.tobytes(), json.dumps({"type": "input.done"})])
    assert t.close_code == 1000, t.events
    done = t.of("session.done")[0]
    assert done["partials_skipped"] >= 1
    after = {o: metric(server, "audioserve_live_partials_total", outcome=o) - before[o]
             for o in outcomes}
    assert after["behind"] >= 1
    assert (after["sent"], after["coalesced"], after["cancelled"]) == (
        done["partials"], done["partials_coalesced"], done["partials_cancelled"])
    assert after["behind"] + after["refused"] == done["partials_skipped"]
    assert len(t.of("emotion.partial")) == done["partials"]
    assert all(s["task"] in ("classify", "emotion") for s in t.of("skipped"))
    assert len(t.of("emotion.utterance")) + len(
        [s for s in t.of("skipped") if s["task"] == "emotion"]) == 1  # its final: sent or said


def test_metrics_after_a_stream(server: RunningServer) -> None:
    lag_before = metric(server, "audioserve_live_result_lag_seconds_count",
                         task="classify")
    t = _session(server, [_config(classify={"labels": LABELS, "hop_s": 1.0}),
                          *[_tone(1.0)] * 3, json.dumps({"type": "input.done"})])
    assert t.close_code == 1000
    windows = len(t.of("classify.window"))
    assert windows >= 1
    lag_after = metric(server, "audioserve_live_result_lag_seconds_count",
                         task="classify")
    assert lag_after - lag_before == windows
    assert metric(server, "audioserve_live_streams") == 0
    assert metric(server, "audioserve_live_audio_seconds_total") >= 3.0
    assert metric(server, "audioserve_live_closed_total", reason="done") >= 1


def test_encoded_input_is_paced(live_models_dir: Path) -> None:  # noqa: F811
    """12 s of Ogg/Opus sent at once is decoded and analysed no faster than real time plus
    LIVE_MAX_AHEAD_S, as PCM is read: with room for 2 windows in flight, a window every
    second of real time leaves nothing skipped, where decoding it all at once completed
    every window together and skipped all but 2 (`behind`). Each window comes no sooner
    than its end minus the allowance after the first frame was sent (a lower bound:
    a slow host only makes it later)."""
    from service.audio.encode import encode_audio

    ahead_s, seconds = 0.5, 12
    tone = np.frombuffer(_tone(seconds, 48_000), "<i2").astype(np.float32) / 32768
    data = encode_audio(tone, 48_000, "opus")
    with serve_app(models_dir=live_models_dir, live_max_ahead_s=ahead_s,
                   live_max_pending=2) as server, open_stream(server) as ws:
        ws.send(json.dumps({"type": "session.config", "input": {"format": "ogg"},
                            "classify": {"labels": LABELS, "hop_s": 1.0}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        sent_at = time.monotonic()
        for frame in frames(data):
            ws.send(frame)
        ws.send(json.dumps({"type": "input.done"}))
        windows: list[tuple[float, float]] = []  # (end_s, seconds after the first frame)
        events = []
        for message in ws:
            event = json.loads(message)
            events.append(event)
            if event["type"] == "classify.window":
                windows.append((event["end_s"], time.monotonic() - sent_at))
    assert events[-1]["type"] == "session.done", events[-1]
    assert not [e for e in events if e["type"] == "skipped"], events
    assert len(windows) >= seconds
    early = [(end, at) for end, at in windows if at < end - ahead_s - 0.1]
    assert not early, f"windows received before their audio was due: {early}"


# -- a client that does not read ------------------------------------------------------------

def test_a_client_that_does_not_read_is_cut_off(live_models_dir: Path) -> None:  # noqa: F811
    """Small socket buffers both ends, a client that never reads: once live_send_buffer
    events wait unsent, the stream is cut off (1008, slow_reader) and its work cancelled;
    the server keeps serving. The client sends until the server cuts it off."""
    labels = [f"label number {i} " + "x" * 180 for i in range(64)]
    with serve_app(models_dir=live_models_dir, send_buffer_bytes=4096, live_send_buffer=4,
                   live_max_pending=64, live_max_ahead_s=1e6, live_close_timeout_s=1.0,
                   live_max_stream_seconds=1e6, live_max_frame_bytes=1024 * 1024,
                   write_timeout_s=2.0) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        with connect(ws_url(server), sock=sock, open_timeout=30, close_timeout=5,
                     max_size=None, max_queue=1, ping_interval=None) as ws:
            ws.send(json.dumps({"type": "session.config", "input": PCM8K,
                                "classify": {"labels": labels, "hop_s": 0.5}}))
            sent = 0
            try:
                while sent < 1e6:  # until the server cuts it off
                    ws.send(_tone(10.0))
                    sent += 10
            except ConnectionClosed:
                pass
            t = read_all(ws)
        assert t.close_code in (1008, None)  # the close frame may not get through either
        deadline = time.monotonic() + 60
        while metric(server, "audioserve_live_closed_total", reason="slow_reader") < 1:
            assert time.monotonic() < deadline, "the stream was not ended"
            time.sleep(0.05)
        assert metric(server, "audioserve_live_streams") == 0
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


def _assert_ended_disconnected_early(server: RunningServer, audio_before: float) -> None:
    """The stream ends, counted as disconnected, having read under half of the 60 s of
    audio its client queued (read at real-time pace: the rest was never needed)."""
    deadline = time.monotonic() + 60
    while metric(server, "audioserve_live_closed_total", reason="disconnected") < 1:
        assert time.monotonic() < deadline, "the stream was not ended"
        time.sleep(0.05)
    read = metric(server, "audioserve_live_audio_seconds_total") - audio_before
    assert metric(server, "audioserve_live_streams") == 0
    assert read < 30, f"{read:.0f} s of the queued 60 s were read after the client was gone"


def test_a_client_gone_with_audio_still_queued_ends_at_the_failed_send(
        live_models_dir: Path) -> None:  # noqa: F811
    """The client queues a minute of audio at once (the server reads it at real-time pace)
    and resets the connection. The next result cannot be sent: the stream ends there,
    counted as disconnected, instead of reading the queued audio for nothing."""
    import struct

    with serve_app(models_dir=live_models_dir, live_max_ahead_s=0.0,
                   live_max_stream_seconds=1e6) as server:
        audio_before = metric(server, "audioserve_live_audio_seconds_total")
        sock = socket.create_connection((server.host, server.port))
        ws = connect(ws_url(server), sock=sock, open_timeout=30, ping_interval=None,
                     subprotocols=[PROTOCOL])
        ws.send(json.dumps({"type": "session.config", "input": PCM8K,
                            "classify": {"labels": ["tone", "noise"], "hop_s": 0.5}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for _ in range(60):
            ws.send(_tone(1.0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset: no close frame, nothing more read
        _assert_ended_disconnected_early(server, audio_before)


def test_a_failed_send_ends_the_stream_at_once(live_models_dir: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A result that cannot be sent (the transport failed under the server: a keepalive
    timeout, say, while the client's queued audio still waits to be read) ends the stream
    as disconnected there, instead of reading the queued audio and filling the outbox."""
    from starlette.websockets import WebSocket

    send_text = WebSocket.send_text

    async def failing(self: WebSocket, data: str) -> None:
        if '"classify.window"' in data:
            raise RuntimeError("the transport is gone")
        await send_text(self, data)

    monkeypatch.setattr(WebSocket, "send_text", failing)
    with serve_app(models_dir=live_models_dir, live_max_ahead_s=0.0,
                   live_max_stream_seconds=1e6) as server:
        audio_before = metric(server, "audioserve_live_audio_seconds_total")
        with connect(ws_url(server), open_timeout=30, subprotocols=[PROTOCOL]) as ws:
            ws.send(json.dumps({"type": "session.config", "input": PCM8K,
                                "classify": {"labels": ["tone", "noise"], "hop_s": 0.5}}))
            for _ in range(60):
                ws.send(_tone(1.0))
            _assert_ended_disconnected_early(server, audio_before)
