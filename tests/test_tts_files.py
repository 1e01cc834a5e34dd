"""The bytes a client saves are a file that reads back whole (issue 13, item 10): every
route x format x stream flag, through the real app on a real socket, read with soundfile
(lossless formats, and MP3 / Opus, which it also reads) and PyAV (every format).

The one exception is documented rather than hidden: a streamed FLAC cannot state its
length (STREAMINFO total_samples = 0), and soundfile then cannot read it at all. Such a
response says so (`X-Audioserve-Length-In-File: false`), PyAV reads it whole, and the
OpenAI route sends FLAC whole unless `stream: true` is asked for."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.tools import require_module
from tests.tts_server import RunningServer, serve_app

RATE = 24000
FORMATS = ["wav", "flac", "mp3", "opus", "aac", "pcm"]
LOSSLESS = {"wav", "flac", "pcm"}
SOUNDFILE_READS = {"wav", "flac", "pcm", "mp3", "opus"}
"""libsndfile 1.2 reads MP3 and Ogg Opus too; AAC (ADTS) only PyAV."""
CODEC_SLACK_S = 0.12
"""Lossy codecs add priming and pad the last frame (MP3 1105 + up to 1152 samples, AAC
1024 + up to 1024, Opus up to one 20 ms frame): the decoded audio may be this much longer."""


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[RunningServer]:
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, tts_stream_chunk_tokens=8,
                   voices_dir=tmp_path_factory.mktemp("voices")) as s:
        yield s


def request(server: RunningServer, route: str, fmt: str, stream: bool | None
            ) -> httpx.Response:
    if route == "tts":
        path = "/tts"
        body: dict[str, object] = {"text": "hello world, this is a test.", "seed": 3,
                                   "max_new_tokens": 90, "format": fmt}
    else:
        path = "/v1/audio/speech"
        body = {"model": "tts-1", "input": "hello world, this is a test.", "voice": "alloy",
                "seed": 3, "response_format": fmt}
    if stream is not None:
        body["stream"] = stream
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as r:
        r.read()  # everything the client receives, as it would save it
    assert r.status_code == 200, r.text[:300]
    return r


@pytest.fixture(scope="module")
def reference(server: RunningServer) -> dict[str, np.ndarray]:
    """Each route's one-shot PCM: the samples every other format must give back."""
    out = {}
    for route in ("tts", "speech"):
        r = request(server, route, "pcm", stream=False)
        out[route] = np.frombuffer(r.content, "<i2").astype(np.float32) / 32767
    return out


def with_soundfile(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        samples, rate = sf.read(io.BytesIO(data), samplerate=RATE, channels=1,
                                format="RAW", subtype="PCM_16", dtype="float32")
    else:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    return np.asarray(samples)


def with_pyav(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        parts = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        samples = np.concatenate(parts)
        if samples.dtype.kind == "i":  # s16 / s32 decoders: full scale -> 1.0
            return samples.astype(np.float32) / -np.iinfo(samples.dtype).min, int(stream.rate)
        return samples.astype(np.float32), int(stream.rate)


def check_whole(samples: np.ndarray, rate: int, want: np.ndarray, fmt: str) -> None:
    seconds, expected = len(samples) / rate, len(want) / RATE
    if fmt in LOSSLESS:
        assert rate == RATE and len(samples) == len(want)
        assert np.max(np.abs(samples - want)) <= 2 / 32767
    else:
        assert expected - 0.005 <= seconds <= expected + CODEC_SLACK_S, (seconds, expected)
        assert np.max(np.abs(samples)) > 0.01  # real audio, not silence


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["tts", "speech"])
def test_saved_bytes_read_back_whole(server: RunningServer, reference: dict[str, np.ndarray],
                                     route: str, fmt: str, stream: bool) -> None:
    r = request(server, route, fmt, stream)
    want = reference[route]
    streamed = r.headers.get("content-length") is None
    assert streamed == stream
    if fmt == "pcm":  # raw samples: the rate travels in a header
        assert r.headers["x-audioserve-sample-rate"] == str(RATE)
    if fmt != "pcm":
        samples, rate = with_pyav(r.content)
        check_whole(samples, rate, want, fmt)
    if fmt in SOUNDFILE_READS and not (stream and fmt == "flac"):
        check_whole(with_soundfile(r.content, fmt), RATE, want, fmt)
    if stream and fmt == "flac":
        # the documented exception: the file cannot say how long it is, and says so
        assert r.headers["x-audioserve-length-in-file"] == "false"
        with pytest.raises((ValueError, sf.LibsndfileError)):
            sf.read(io.BytesIO(r.content))
    if stream:
        assert ("x-audioserve-length-in-file" in r.headers) == (fmt != "opus")
    else:
        assert "x-audioserve-length-in-file" not in r.headers


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_route_streams_by_default_except_flac(server: RunningServer, fmt: str) -> None:
    """What the `openai` client gets when it does not ask: a stream, except FLAC, which
    is sent whole so that soundfile can read what the user saves."""
    r = request(server, "speech", fmt, stream=None)
    streamed = r.headers.get("content-length") is None
    assert streamed == (fmt != "flac")
    if fmt == "flac":
        assert len(with_soundfile(r.content, "flac")) > 0


def test_openai_client_saves_a_readable_flac(server: RunningServer, tmp_path: Path,
                                            reference: dict[str, np.ndarray]) -> None:
    """The issue's user: the official client's streaming response saved to a file."""
    openai = require_module("openai", "the `dev` extra: pip install -e '.[dev]'")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    path = tmp_path / "speech.flac"
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="hello world, this is a test.",
            response_format="flac", extra_body={"seed": 3}) as response:
        response.stream_to_file(path)
    samples, rate = sf.read(path, dtype="float32")
    check_whole(samples, rate, reference["speech"], "flac")
