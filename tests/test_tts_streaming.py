"""Streamed TTS through the real app on a real socket (uvicorn + httpx): chunked audio
equal to the one-shot output, long text as pieces, encoded streams, and a client that
closes the stream aborting its generation. Plus the stream's building blocks."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.audio.decode import decode_audio
from service.routes.tts import sentences_field
from service.tts.streaming import (
    RunningLimiter,
    Stitcher,
    WindowPlanner,
    receptive_field_tokens,
    stitch,
    stitch_with_spans,
)
from service.tts.stretch import StreamingStretch, time_stretch
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.conftest import running_app, wait_until
from tests.tts_server import RunningServer, serve_app

CHUNK_TOKENS = 8
PIECE_CHARS = 40
LONG_TEXT = ("The first sentence is here. And a second one, with a clause; "
             "then a third sentence ends it.")


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   tts_stream_chunk_tokens=CHUNK_TOKENS, tts_piece_max_chars=PIECE_CHARS,
                   tts_max_text_chars=400, warmup=False) as s:
        yield s


def _engine(server: RunningServer):  # type: ignore[no-untyped-def]
    return server.app.state.pipelines["chattts"].engine


def post(server: RunningServer, **body: object) -> httpx.Response:
    payload = {"text": "hello world, this is a test.", "seed": 1, "max_new_tokens": 120,
               **body}
    return httpx.post(server.url + "/tts", json=payload, timeout=60)


def stream(server: RunningServer, **body: object) -> tuple[httpx.Response, list[bytes]]:
    payload = {"text": "hello world, this is a test.", "seed": 1, "max_new_tokens": 120,
               "stream": True, **body}
    with httpx.stream("POST", server.url + "/tts", json=payload, timeout=60) as r:
        chunks = [c for c in r.iter_raw() if c]
    return r, chunks


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0


def test_streamed_pcm_equals_one_shot(server: RunningServer) -> None:
    whole = post(server, format="pcm")
    r, chunks = stream(server, format="pcm")
    assert r.status_code == 200
    assert r.headers.get("content-length") is None  # chunked
    tokens = int(whole.headers["x-audioserve-tokens"])
    assert tokens > 3 * CHUNK_TOKENS, "too short to test window seams"
    assert len(chunks) >= 3
    streamed, one_shot = pcm(b"".join(chunks)), pcm(whole.content)
    assert len(streamed) == len(one_shot) == 512 * tokens - 256
    assert np.max(np.abs(streamed - one_shot)) <= 1e-3


def test_wav_stream_has_open_ended_header(server: RunningServer) -> None:
    r, chunks = stream(server, format="wav")
    data = b"".join(chunks)
    assert r.headers["content-type"] == "audio/wav"
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    one_shot = pcm(post(server, format="pcm").content)
    assert len(pcm(data[44:])) == len(one_shot)
    assert np.max(np.abs(pcm(data[44:]) - one_shot)) <= 1e-3  # float rounding: +-1 LSB


def test_long_text_pieces_stream_like_one_shot(server: RunningServer) -> None:
    whole = post(server, text=LONG_TEXT, format="pcm", max_new_tokens=60)
    pieces = int(whole.headers["x-audioserve-pieces"])
    assert pieces >= 3  # ~95 characters at <= 40 per piece
    r, chunks = stream(server, text=LONG_TEXT, format="pcm", max_new_tokens=60)
    assert r.headers["x-audioserve-pieces"] == str(pieces)
    streamed, one_shot = pcm(b"".join(chunks)), pcm(whole.content)
    tokens = int(whole.headers["x-audioserve-tokens"])
    crossfade = 240  # 10 ms at 24 kHz, once per seam between pieces
    assert len(one_shot) == 512 * tokens - 256 * pieces - crossfade * (pieces - 1)
    assert len(streamed) == len(one_shot)
    assert np.max(np.abs(streamed - one_shot)) <= 1e-3


def test_long_text_pieces_run_in_one_batch(server: RunningServer) -> None:
    """A long request parallelises with itself: its pieces share decode steps."""
    engine = _engine(server)
    before = engine.stats()
    r = post(server, text=LONG_TEXT, format="pcm", max_new_tokens=40)
    after = engine.stats()
    assert r.status_code == 200
    steps = after.decode_steps - before.decode_steps
    rows = after.decode_rows - before.decode_rows
    assert rows > 1.5 * steps  # > 1 sequence per step on average


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_encoded_streams_decode_to_the_right_length(server: RunningServer, fmt: str) -> None:
    r, chunks = stream(server, format=fmt)
    assert r.status_code == 200
    one_shot = post(server, format="pcm")
    decoded = decode_audio(b"".join(chunks), target_rate=24000, max_seconds=60,
                           on_long="reject", max_bytes=10**7)
    assert decoded.duration_s == pytest.approx(len(one_shot.content) / 2 / 24000, abs=0.08)


def test_resampled_stream_matches_one_shot_length(server: RunningServer) -> None:
    _r, chunks = stream(server, format="pcm", sample_rate=16000)
    whole = post(server, format="pcm", sample_rate=16000)
    streamed, one_shot = pcm(b"".join(chunks)), pcm(whole.content)
    assert abs(len(streamed) - len(one_shot)) <= 1
    n = min(len(streamed), len(one_shot))
    assert np.max(np.abs(streamed[:n] - one_shot[:n])) <= 1e-2


def test_client_closing_the_stream_aborts_generation(server: RunningServer) -> None:
    engine = _engine(server)
    payload = {"text": "a long one that we will not wait for", "seed": 1,
               "max_new_tokens": 4000, "format": "pcm"}
    natural = int(post(server, **payload).headers["x-audioserve-tokens"])
    assert natural > 300, "pick a seed whose speech runs long enough to interrupt"
    before = engine.stats()
    with httpx.stream("POST", server.url + "/tts", json={**payload, "stream": True},
                      timeout=60) as r:
        first = next(r.iter_raw())
        assert first
    wait_until(lambda: engine.active == 0, "the slot is freed after the client left")
    after = engine.stats()
    assert after.aborted == before.aborted + 1
    assert after.decode_rows - before.decode_rows < natural  # cut off, not run to the end


def test_bad_stream_request_is_a_normal_422(server: RunningServer) -> None:
    r = post(server, stream=True, seed=None, voice="nobody-knows-me")
    assert r.status_code == 422
    assert "nobody-knows-me" in r.json()["error"]["message"]


# -- building blocks ---------------------------------------------------------------------


def test_receptive_field_of_real_and_tiny_packs() -> None:
    real = {"decoder": {"n_layer": 12}, "vocos_layers": 8, "n_fft": 1024, "hop_length": 256}
    assert receptive_field_tokens(real) == 53  # 104 mel frames -> 52 tokens, + 1 spare
    tiny = {"decoder": {"n_layer": 2}, "vocos_layers": 2, "n_fft": 1024, "hop_length": 256}
    assert receptive_field_tokens(tiny) == 14


def test_window_planner_sends_every_sample_once() -> None:
    planner = WindowPlanner(512, chunk_tokens=5, context=3, lookahead=4, max_chunk_tokens=20)
    sent = []
    for n in range(1, 100):
        if (w := planner.next(n, finished=False)) is not None:
            assert w.start <= max(0, w.send_from // 512 - 3)
            assert w.send_to <= 512 * (n - 4)
            sent.append((w.send_from, w.send_to))
    last = planner.next(100, finished=True)
    assert last is not None
    sent.append((last.send_from, last.send_to))
    assert sent[0] == (0, 512 * 5)  # the first chunk is sent as soon as it is clear
    assert [(b - a) // 512 for a, b in sent[:5]] == [5, 10, 20, 20, 20]  # doubling, capped
    assert sent[-1][1] == 512 * 100 - 256
    assert all(a[1] == b[0] for a, b in itertools.pairwise(sent))


@pytest.mark.parametrize("lengths", [[3000, 2000], [100, 5000, 50], [0, 700]])
def test_streamed_stitching_equals_one_shot(lengths: list[int]) -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    stitcher = Stitcher(240)
    out = []
    for piece in pieces:
        stitcher.start_piece()
        cuts = sorted(rng.integers(0, len(piece) + 1, size=4))
        for a, b in zip([0, *cuts], [*cuts, len(piece)], strict=True):
            out.append(stitcher.feed(piece[a:b], piece_done=False))
        out.append(stitcher.feed(np.zeros(0, np.float32), piece_done=True))
    out.append(stitcher.finish())
    np.testing.assert_array_equal(np.concatenate(out), stitch(pieces, 240))
    joined, spans = stitch_with_spans(pieces, 240)  # the one-shot spans: the stream's
    assert spans == list(zip(stitcher.starts, stitcher.ends, strict=True))
    assert spans[0][0] == 0 and spans[-1][1] == len(joined)


def test_the_spans_field_stays_inside_client_limits() -> None:
    """2000 characters (TTS_MAX_TEXT_CHARS) of 3-character sentences are 667 pieces; with
    7-digit sample numbers (TTS_MAX_OUTPUT_S = 300 s) their spans need ~11 KB, past the
    8 KB field many clients and proxies take: over TTS_SPANS_FIELD_MAX_BYTES only the
    count is said."""
    worst = [(7_200_000 - 16 * (i + 1), 7_200_000 - 16 * i) for i in range(667)]
    assert len(sentences_field(worst, 24000, 1 << 20)) > 8192
    assert sentences_field(worst, 24000, 4096) == "rate=24000; omitted=667"
    assert sentences_field([(0, 10), (5, 20)], 24000, 4096) == "rate=24000; spans=0-10,5-20"
    assert sentences_field([], 24000, 4096) == "rate=24000; spans="


def test_stitch_crossfades_between_pieces() -> None:
    a, b = np.ones(1000, np.float32), -np.ones(1000, np.float32)
    joined = stitch([a, b], 100)
    assert len(joined) == 1900
    assert joined[899] == 1 and joined[1000] == -1
    assert np.all(np.diff(joined[899:1001]) < 0)  # a monotone ramp from +1 to -1


def test_running_limiter_only_attenuates() -> None:
    limiter = RunningLimiter(0.95)
    quiet = np.full(10, 0.5, np.float32)
    np.testing.assert_array_equal(limiter(quiet), quiet)
    loud = limiter(np.full(10, 1.9, np.float32))
    assert np.max(np.abs(loud)) == pytest.approx(0.95)
    assert limiter(quiet)[0] == pytest.approx(0.25)  # the gain never rises again


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.7, 1.5, 2.0, 4.0])
@pytest.mark.parametrize("length", [1, 1023, 7777, 24000])
def test_streaming_stretch_equals_the_whole_piece_stretch(speed: float, length: int) -> None:
    """Fed in uneven chunks (as decoded windows come), sample for sample the one-shot
    output: what a streamed stretched piece sends is what its whole file holds."""
    rng = np.random.default_rng(length)
    wave = (0.3 * rng.standard_normal(length)).astype(np.float32)
    whole = time_stretch(wave, speed)
    stretch, parts, at = StreamingStretch(speed), [], 0
    while at < length:
        size = int(rng.integers(1, 3000))
        parts.append(stretch.feed(wave[at : at + size]))
        at += size
    parts.append(stretch.finish())
    assert sum(len(p) for p in parts[:-1]) > 0 or length < 4096  # it flows before the end
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert len(whole) == round(length / speed)


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 4.0])
def test_time_stretch_keeps_pitch_and_meets_duration(speed: float) -> None:
    rate = 24000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    out = time_stretch(tone, speed)
    assert len(out) == round(rate / speed)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.fft.rfftfreq(len(out), 1 / rate)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(300, abs=rate / len(out) + 1)


def test_stream_over_capacity_is_refused_before_audio(chattts_models_dir: Path) -> None:  # noqa: F811
    with running_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                     tts_max_active=1, tts_max_waiting=1, tts_piece_max_chars=20,
                     warmup=False) as client:
        r = client.post("/tts", json={"text": LONG_TEXT, "seed": 1, "max_new_tokens": 8,
                                      "stream": True})
        # 6 pieces, room for 2 sequences in all: refused as a whole, before any audio, and
        # as a 413 (it could never fit), not a 503 to retry
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        assert "6 pieces" in r.json()["error"]["message"]
        engine = client.app.state.pipelines["chattts"].engine
        engine.reserve(2)  # another client holds every place: a stream that fits waits
        try:
            busy = client.post("/tts", json={"text": "Hi.", "seed": 1, "max_new_tokens": 8,
                                             "stream": True})
        finally:
            engine.release()
            engine.release()
        assert busy.status_code == 503  # refused before any audio, to be retried
        assert busy.json()["error"]["code"] == "overloaded"
        assert "retry-after" in busy.headers
