"""`POST /v1/audio/speech` driven by the official `openai` client against the real app on a
real socket, plus OpenAI's error shape and the speed/format options."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from service.audio.decode import decode_audio
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.tools import require_module
from tests.tts_server import RunningServer, serve_app

openai = require_module("openai", "the `dev` extra: pip install -e '.[dev]'")
TEXT = "hello there, general kenobi."
SEED = 7  # the request's sampling seed (an extension), so outputs are comparable


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[RunningServer]:
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   tts_stream_chunk_tokens=8, tts_max_text_chars=200, warmup=False,
                   voices_dir=tmp_path_factory.mktemp("voices")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def raw(server: RunningServer, **body: object) -> httpx.Response:
    payload = {"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": SEED, **body}
    return httpx.post(server.url + "/v1/audio/speech", json=payload, timeout=60)


def test_openai_client_create_gives_mp3_by_default(client) -> None:  # type: ignore[no-untyped-def]
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    data = response.read()
    assert data[:3] == b"ID3" or data[0] == 0xFF  # an MP3 stream (tag or frame sync)
    decoded = decode_audio(data, target_rate=24000, max_seconds=60, on_long="reject",
                           max_bytes=10**7)
    assert decoded.duration_s > 0.05


def test_openai_client_streaming_response(client, server: RunningServer) -> None:  # type: ignore[no-untyped-def]
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="pcm",
            extra_body={"seed": SEED}) as response:
        assert response.headers["content-type"] == "audio/pcm"
        chunks = [c for c in response.iter_bytes() if c]
    streamed = b"".join(chunks)
    whole = raw(server, response_format="pcm", stream=False)
    assert whole.status_code == 200
    a = np.frombuffer(streamed, "<i2").astype(np.int32)
    b = np.frombuffer(whole.content, "<i2").astype(np.int32)
    assert len(a) == len(b) > 0
    assert np.max(np.abs(a - b)) <= 33  # 1e-3 of full scale


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "aac", "mp3"])
def test_response_formats(client, fmt: str) -> None:  # type: ignore[no-untyped-def]
    data = client.audio.speech.create(model="tts-1", voice="echo", input=TEXT,
                                      response_format=fmt, extra_body={"seed": SEED}).read()
    decoded = decode_audio(data, target_rate=24000, max_seconds=60, on_long="reject",
                           max_bytes=10**7)
    assert decoded.duration_s > 0.05


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_changes_duration(server: RunningServer, speed: float) -> None:
    normal = raw(server, response_format="wav", stream=False)
    fast = raw(server, response_format="wav", stream=False, speed=speed)
    n, _ = sf.read(io.BytesIO(normal.content), dtype="float32")
    f, _ = sf.read(io.BytesIO(fast.content), dtype="float32")
    assert len(f) == pytest.approx(len(n) / speed, abs=2)
    streamed = raw(server, response_format="pcm", speed=speed)  # per piece when stretched
    assert len(streamed.content) // 2 == len(f)


def test_sse_stream_format(server: RunningServer) -> None:
    r = raw(server, response_format="pcm", stream_format="sse")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert events[-1]["usage"]["output_tokens"] > 0
    assert len(audio) == len(raw(server, response_format="pcm", stream=False).content)
    assert "content-disposition" not in r.headers  # events, not a speech.pcm file


@pytest.mark.parametrize("stream", [True, False])
def test_instructions_are_said_to_be_ignored(server: RunningServer, stream: bool) -> None:
    styled = raw(server, response_format="pcm", stream=stream, instructions="whisper it")
    assert styled.status_code == 200
    assert "instructions" in styled.headers["x-audioserve-ignored"]
    plain = raw(server, response_format="pcm", stream=stream)
    assert "x-audioserve-ignored" not in plain.headers
    assert styled.content == plain.content  # the same audio: nothing was used


def test_voice_mix_and_raw_speaker_string(server: RunningServer) -> None:
    from service.tts import speaker

    alloy = raw(server, response_format="pcm", stream=False)
    mixed = raw(server, response_format="pcm", stream=False, voice="alloy(2)+echo(1)")
    spk = speaker.encode_spk_emb(np.random.default_rng(1).standard_normal(32))
    custom = raw(server, response_format="pcm", stream=False, voice=spk)
    assert mixed.status_code == custom.status_code == 200
    assert mixed.content != alloy.content


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": ""}, 422, "input"),
        ({"input": "x" * 201}, 413, "input"),
        ({"voice": "nobody"}, 422, "voice"),
        ({"voice": "a(0)+b"}, 422, "voice"),
        ({"model": "whisper-1"}, 422, "model"),
        ({"response_format": "ogg"}, 422, "response_format"),
        ({"speed": 5.0}, 422, "speed"),
        ({"speed": 0.1}, 422, "speed"),
        ({"colour": "blue"}, 422, "colour"),
    ],
)
def test_errors_use_openai_shape(server: RunningServer, body: dict[str, object], status: int,
                                 param: str | None) -> None:
    r = raw(server, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]


def test_unreadable_json_gets_openai_shape(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v1/audio/speech", content=b"{not json",
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400  # malformed, as every route answers it
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "not valid JSON" in r.json()["error"]["message"]


def test_openai_client_raises_on_bad_request(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    assert info.value.body["param"] == "voice"  # type: ignore[index]


@pytest.mark.parametrize("route,body", [
    ("/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ("/tts", {"text": "hi"}),
    ("/v1/voices", {"name": "form-voice", "seed": 1}),
])
@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=x"])
def test_a_json_route_given_another_content_type_says_so(
        server: RunningServer, route: str, body: dict[str, object],
        content_type: str | None) -> None:
    """curl -d without `-H content-type` sends a form: a 415 naming the content type to
    send, in the route's error shape, not a 422 about dictionaries."""
    if content_type is None:  # httpx's form encoding, as curl -d sends it
        r = httpx.post(server.url + route, data={"body": json.dumps(body)}, timeout=30)
    else:
        r = httpx.post(server.url + route, content=json.dumps(body).encode(), timeout=30,
                       headers={"content-type": content_type})
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert "application/json" in error["message"]
    kind = content_type.split(";")[0] if content_type else "application/x-www-form-urlencoded"
    assert repr(kind) in error["message"]
    if route.startswith("/v1/audio"):
        assert set(error) == {"message", "type", "param", "code"}
    ok = httpx.post(server.url + route, json=body, timeout=60)
    assert ok.status_code in (200, 201, 409), ok.text  # the same body as JSON is taken
