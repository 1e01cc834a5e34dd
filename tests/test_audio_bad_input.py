"""Hostile and broken uploads at the decoder: each gets the right error quickly, and
nothing an upload's header claims can make the decoder read (or allocate) past the cap."""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf

from service.audio import MAX_CHANNELS, DecodedAudio, decode_audio
from service.errors import ApiError, InvalidInput, PayloadTooLarge, UnsupportedMedia
from tests.audio_fixtures import (
    make_tone,
    random_bytes,
    silent_flac,
    silent_mka_flac,
    silent_opus,
    tiny_png,
    wav_header,
    write_audio,
)

FAST_S = 1.0


def _timed(data: bytes, **kwargs: object) -> tuple[DecodedAudio | ApiError, float]:
    params: dict[str, object] = {"target_rate": 16000, "max_seconds": 30.0, **kwargs}
    start = time.perf_counter()
    try:
        result: DecodedAudio | ApiError = decode_audio(data, **params)  # type: ignore[arg-type]
    except ApiError as exc:
        result = exc
    return result, time.perf_counter() - start


def _tone(fmt: str, seconds: float = 3.0) -> bytes:
    return write_audio(make_tone(seconds, 44100), 44100, fmt)


def _wav_4gb_claim() -> bytes:
    real = _tone("wav")
    return wav_header(rate=44100, channels=1, data_bytes=0xFFFFFFF0,
                      riff_bytes=0xFFFFFFF8) + real[44:]


def _float_wav_with_nan() -> bytes:
    x = make_tone(0.5, 16000)[:, 0].astype(np.float32)
    x[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


REFUSED: dict[str, tuple[Callable[[], bytes], type[ApiError], str]] = {
    "empty": (lambda: b"", InvalidInput, "empty"),
    "random bytes": (random_bytes, UnsupportedMedia, "accepted: WAV, FLAC, MP3"),
    "mp3 first 200 bytes": (lambda: _tone("mp3")[:200], UnsupportedMedia, "accepted"),
    "flac first 100 bytes": (lambda: _tone("flac")[:100], UnsupportedMedia, "accepted"),
    "65535 channels": (lambda: wav_header(rate=44100, channels=65535, data_bytes=131070)
                       + bytes(131070), UnsupportedMedia, ""),
    f"{MAX_CHANNELS + 1} channels": (
        lambda: wav_header(rate=8000, channels=MAX_CHANNELS + 1, data_bytes=2 * 65 * 800)
        + bytes(2 * 65 * 800), UnsupportedMedia, "channels"),
    "sample rate 0": (lambda: wav_header(rate=0, channels=1, data_bytes=2000) + bytes(2000),
                      UnsupportedMedia, ""),
    "no samples": (lambda: wav_header(rate=16000, channels=1, data_bytes=0), InvalidInput,
                   "no samples"),
    "NaN samples": (_float_wav_with_nan, InvalidInput, "non-finite"),
    "png": (tiny_png, UnsupportedMedia, "accepted"),
    "json": (lambda: json.dumps({"audio": "not really", "labels": ["a", "b"]}).encode(),
             UnsupportedMedia, "accepted"),
    "text": (lambda: b"hello, this is not audio\n" * 200, UnsupportedMedia, "accepted"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_upload_is_refused_with_the_right_error_fast(case: str) -> None:
    make, error, message = REFUSED[case]
    result, seconds = _timed(make())
    assert isinstance(result, error), result
    assert message in result.message
    assert seconds < FAST_S


def test_mp3_cut_in_half_yields_the_decodable_part() -> None:
    full = _tone("mp3", 3.0)
    result, seconds = _timed(full[: len(full) // 2])
    assert isinstance(result, DecodedAudio) and seconds < FAST_S
    assert 1.2 < result.duration_s < 1.8


def test_flac_cut_mid_stream_keeps_the_frames_before_the_cut() -> None:
    source = make_tone(3.0, 44100)[:, 0]
    full = write_audio(source, 44100, "flac")
    result, seconds = _timed(full[: len(full) // 2], target_rate=44100)
    assert isinstance(result, DecodedAudio) and seconds < FAST_S
    assert result.incomplete and 1.0 < result.duration_s < 1.6
    n = len(result.samples)
    assert np.max(np.abs(result.samples - source[:n])) < 1e-4


def test_wav_header_claiming_4gb_reads_the_real_data() -> None:
    result, seconds = _timed(_wav_4gb_claim(), max_bytes=10_000_000)
    assert isinstance(result, DecodedAudio) and seconds < FAST_S
    assert result.duration_s == pytest.approx(3.0)


# case -> (file, the length its header claims: None when it claims nothing)
HOUR_LONG: dict[str, tuple[Callable[[], bytes], float | None]] = {
    "flac, length in header": (lambda: silent_flac(3600), 3600.0),
    "flac, length hidden (written to a pipe)": (
        lambda: silent_flac(3600, hide_length=True), None),
    "flac in streamed matroska (FFmpeg path)": (lambda: silent_mka_flac(3600), None),
    "ogg opus": (lambda: silent_opus(3600), 3600.0),
}


@pytest.mark.parametrize("case", list(HOUR_LONG))
def test_an_hour_of_silence_is_refused_or_capped_fast_with_bounded_memory(case: str) -> None:
    make, claimed = HOUR_LONG[case]
    data = make()
    assert len(data) < 2_000_000  # tiny upload, 230 MB of float32 if decoded whole
    result, seconds = _timed(data)
    assert isinstance(result, PayloadTooLarge) and "30 s limit" in result.message
    assert seconds < FAST_S

    # tracemalloc sees numpy's buffers (where decoded audio lives), not the C decoders'
    tracemalloc.start()
    try:
        result, seconds = _timed(data, on_long="truncate")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(result, DecodedAudio) and seconds < FAST_S
    assert result.truncated and result.duration_s == 30.0
    assert peak < 40_000_000  # ~2 MB per 30 s of 16 kHz mono, a few copies of it
    expected = None if claimed is None else pytest.approx(claimed, abs=0.1)
    assert result.original_duration_s == expected
