"""POST /tts through the real app (lifespan, pack loading, engine thread) on a tiny pack."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.audio.decode import decode_audio
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.conftest import HANG_S, running_app

MAX_CHARS = 60


@pytest.fixture(scope="module")
def client(chattts_models_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    with running_app(models_dir=chattts_models_dir, models="chattts",
                     tts_max_text_chars=MAX_CHARS, intra_op_threads=1) as c:
        yield c


def tts(client: TestClient, **body: object):  # type: ignore[no-untyped-def]
    payload = {"text": "hello world", "seed": 3, "max_new_tokens": 12, **body}
    return client.post("/tts", json=payload)


def test_wav_with_headers(client: TestClient) -> None:
    r = tts(client)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-audioserve-demo"] == "true"
    tokens = int(r.headers["x-audioserve-tokens"])
    assert 1 <= tokens <= 12
    samples, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == 24000
    assert len(samples) == 512 * tokens - 256  # vocos: hop * (2N - 1)
    assert float(r.headers["x-audioserve-duration-s"]) == pytest.approx(len(samples) / rate,
                                                                         abs=1e-3)
    assert {"generate", "decode", "encode", "total"} <= {
        part.split("=")[0] for part in r.headers["x-audioserve-timings-ms"].split(";")}
    assert np.max(np.abs(samples)) <= 0.95 + 1e-3  # peak-limited, never clipped
    assert np.max(np.abs(samples)) > 0


def test_same_seed_same_audio_other_seed_other_audio(client: TestClient) -> None:
    a, b, c = tts(client, seed=5), tts(client, seed=5), tts(client, seed=6)
    assert a.content == b.content
    assert a.headers["x-audioserve-sampling-seed"] == "5"
    assert a.content != c.content


@pytest.mark.parametrize(("fmt", "media"), [("flac", "audio/flac"), ("mp3", "audio/mpeg"),
                                            ("opus", "audio/ogg"), ("pcm", "audio/pcm")])
def test_formats(client: TestClient, fmt: str, media: str) -> None:
    r = tts(client, format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    duration = float(r.headers["x-audioserve-duration-s"])
    if fmt == "pcm":
        tokens = int(r.headers["x-audioserve-tokens"])
        assert len(r.content) == 2 * (512 * tokens - 256)  # 16-bit mono at 24 kHz
        return
    decoded = decode_audio(r.content, target_rate=24000, max_seconds=60, on_long="reject",
                           max_bytes=10**7)
    assert decoded.duration_s == pytest.approx(duration, abs=0.08)  # codec padding


def test_resampled_output(client: TestClient) -> None:
    r = tts(client, sample_rate=16000)
    assert r.status_code == 200
    assert struct.unpack("<I", r.content[24:28])[0] == 16000
    assert r.headers["x-audioserve-sample-rate"] == "16000"


def test_speaker_string_and_refine(client: TestClient) -> None:
    from service.tts import speaker

    spk = speaker.encode_spk_emb(np.random.default_rng(0).standard_normal(32))
    r = tts(client, seed=None, spk_emb=spk, refine_text=True, sampling_seed=1)
    assert r.status_code == 200, r.text
    assert "refine" in r.headers["x-audioserve-timings-ms"]


def test_the_published_schema_refuses_what_the_route_refuses(client: TestClient) -> None:
    """Two speakers at once, or a format it cannot write: the OpenAPI's request schema
    says no (so a client generating requests from it never sends them) and so does the
    route; a speaker field sent as null is no speaker, for both."""
    spec = client.get("/openapi.json").json()
    registry: Registry[Any] = Registry().with_resource(
        "urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    validator = Draft202012Validator(
        {"$ref": "urn:spec#/paths/~1tts/post/requestBody/content/application~1json/schema"},
        registry=registry)
    for body in ({"text": "hi", "seed": 3, "voice": "alloy"},
                 {"text": "hi", "spk_emb": "x", "seed": 3}, {"text": "hi", "format": "ogg"}):
        assert not validator.is_valid(body), body
        assert client.post("/tts", json=body).status_code == 422, body
    body = {"text": "hi", "seed": 3, "voice": None, "spk_emb": None, "format": "flac"}
    assert validator.is_valid(body)
    assert client.post("/tts", json={**body, "max_new_tokens": 8}).status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   "}, "empty"),
        ({"format": "ogg"}, "format"),
        ({"spk_emb": "not a speaker"}, "seed"),
        ({"seed": None, "spk_emb": "not a speaker"}, "spk_emb"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": 5e-324}, "temperature"),  # 0 in float32: it sampled to the cap
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"sample_rate": 1000}, "sample_rate"),
        ({"voice": "x"}, "voice"),
    ],
)
def test_invalid_requests_get_422(client: TestClient, body: dict[str, object],
                                  fragment: str) -> None:
    r = tts(client, **body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert fragment in error["message"]


def test_text_over_the_limit_gets_413(client: TestClient) -> None:
    r = tts(client, text="x" * (MAX_CHARS + 1))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert f"limit is {MAX_CHARS}" in r.json()["error"]["message"]


def test_listed_as_demo_model(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["chattts"]["demo"] is True
    assert "/tts" in models["chattts"]["endpoints"]


def test_disconnect_cancels_generation_and_frees_the_slot(client: TestClient) -> None:
    """The route's watcher against a client that goes away once its speech is being
    generated, on the app's own loop and engine: the synthesis is cancelled and its
    sequence leaves the engine long before its 3000 tokens (counted, not timed)."""
    from service.pipelines.chattts import SpeechRequest
    from service.routes.tts import ClientGone, cancel_on_disconnect

    pipeline = client.app.state.pipelines["chattts"]  # type: ignore[attr-defined]
    engine = pipeline.engine
    before = engine.stats()

    class GoneOnceGenerating:
        async def is_disconnected(self) -> bool:
            return engine.stats().decode_rows > before.decode_rows

    async def scenario() -> tuple[bool, int]:
        endless = SpeechRequest(text="hello", seed=1, max_new_tokens=3000, min_new_tokens=3000)
        with pytest.raises(ClientGone):
            await cancel_on_disconnect(GoneOnceGenerating(), pipeline.synthesize(endless))
        async with asyncio.timeout(HANG_S):
            while engine.scheduler.has_requests() or engine.cache.size:
                await asyncio.sleep(0.01)
        return engine.scheduler.has_requests(), engine.cache.size

    busy, rows = client.portal.call(scenario)  # type: ignore[union-attr]
    assert (busy, rows) == (False, 0)
    assert engine.stats().aborted == before.aborted + 1
    assert engine.stats().decode_rows - before.decode_rows < 3000  # cut off, not finished


def test_more_pieces_than_the_engine_holds_is_413_not_a_503_forever(
        chattts_models_dir: Path) -> None:  # noqa: F811
    """A request the engine could never admit whole (its pieces over TTS_MAX_ACTIVE +
    TTS_MAX_WAITING) had a 503 with Retry-After, which a client obeying it retried for
    ever; it is a 413 saying the limit."""
    with running_app(models_dir=chattts_models_dir, models="chattts", tts_max_active=2,
                     tts_max_waiting=3, intra_op_threads=1) as c:
        over = c.post("/tts", json={"text": "Hi! " * 6, "split": "sentence", "seed": 3,
                                    "max_new_tokens": 4})
        fits = c.post("/tts", json={"text": "Hi! " * 5, "split": "sentence", "seed": 3,
                                    "max_new_tokens": 4})
        stream = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy",
                                                  "input": "Hi! " * 6, "split": "sentence",
                                                  "stream_format": "sse"})
    assert over.status_code == 413, over.text
    message = over.json()["error"]["message"]
    assert "6 pieces" in message and "TTS_MAX_ACTIVE + AUDIOSERVE_TTS_MAX_WAITING" in message
    assert fits.status_code == 200, fits.text
    assert stream.status_code == 413, stream.text
