"""service.audio.encode: every format round-trips through the decoder; streaming output
plays like the one-shot file; overshoots clip instead of wrapping."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from service.audio.decode import decode_audio
from service.audio.encode import (
    MEDIA_TYPES,
    AudioFormat,
    StreamingEncoder,
    encode_audio,
    pcm16_bytes,
    wav_header,
    wav_stream_header,
)
from service.errors import InvalidInput
from tests.audio_fixtures import best_lag, compare, make_tone

RATE = 24000  # ChatTTS's output rate
CONTAINER_FORMATS = [f for f in AudioFormat if f != AudioFormat.PCM]
# Priming a player keeps because the container cannot say to drop it (in output samples)
STREAM_LAG = {AudioFormat.MP3: 1105, AudioFormat.AAC: 1024}
ONESHOT_LAG = {AudioFormat.AAC: 1024}
MIN_CORRELATION = {AudioFormat.WAV: 0.99999, AudioFormat.FLAC: 0.99999,
                   AudioFormat.MP3: 0.999, AudioFormat.OPUS: 0.999, AudioFormat.AAC: 0.999}


def _decode(data: bytes, fmt: AudioFormat, rate: int = RATE) -> np.ndarray:
    if fmt == AudioFormat.PCM:
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767
    return decode_audio(data, target_rate=rate, max_seconds=600).samples


def _stream(fmt: AudioFormat, x: np.ndarray, rate: int = RATE, chunk: int = 2400) -> list[bytes]:
    encoder = StreamingEncoder(fmt, rate)
    parts = [encoder.write(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return [*parts, encoder.flush()]


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_one_shot_round_trip(fmt: AudioFormat) -> None:
    x = make_tone(2.0, RATE)[:, 0]
    got = _decode(encode_audio(x, RATE, fmt), fmt)
    lag = best_lag(x, got, 4096)
    assert lag == ONESHOT_LAG.get(fmt, 0)
    tolerance = 0.08 if fmt == AudioFormat.AAC else 0.0
    assert abs(len(got) / RATE - 2.0) <= tolerance + 1e-9
    assert compare(x, got[lag:]).correlation > MIN_CORRELATION.get(fmt, 0.99999)
    if fmt in (AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.PCM):
        assert np.max(np.abs(got - x)) <= 2 / 32767


@pytest.mark.parametrize("rate", [22050, 44100, 96000])
@pytest.mark.parametrize("fmt", [AudioFormat.OPUS, AudioFormat.MP3, AudioFormat.AAC])
def test_rates_a_codec_does_not_take_are_resampled(fmt: AudioFormat, rate: int) -> None:
    x = make_tone(1.0, rate)[:, 0]
    data = encode_audio(x, rate, fmt)
    got = decode_audio(data, target_rate=rate, max_seconds=10).samples
    lag = best_lag(x, got, 8192)
    assert compare(x, got[lag:]).correlation > 0.99
    assert abs(len(got) / rate - 1.0) < 0.1


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_overshoot_is_clipped_not_wrapped(fmt: AudioFormat) -> None:
    x = make_tone(1.0, RATE, amplitude=1.6)[:, 0]
    clipped = np.clip(x, -1, 1)
    got = _decode(encode_audio(x, RATE, fmt), fmt)
    got = got[ONESHOT_LAG.get(fmt, 0):]
    n = min(len(got), len(x))
    if fmt in (AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.PCM):
        np.testing.assert_allclose(got[:n], clipped[:n], atol=2 / 32767)
    else:
        assert compare(clipped, got).correlation > 0.99
    loud = np.abs(clipped[:n]) > 0.5  # a wrap-around would flip the sign of these
    assert np.all(np.sign(got[:n][loud]) == np.sign(clipped[:n][loud]))


def test_pcm16_scaling_and_clipping() -> None:
    x = np.array([0.0, 1.0, -1.0, 0.5, 3.0, -3.0, 1.0001], np.float32)
    pcm = np.frombuffer(pcm16_bytes(x), "<i2")
    assert pcm.tolist() == [0, 32767, -32767, 16384, 32767, -32767, 32767]


def test_wav_header_fields() -> None:
    pcm = pcm16_bytes(make_tone(0.25, 16000)[:, 0])
    info = sf.info(io.BytesIO(wav_header(16000, len(pcm)) + pcm))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        16000, 1, len(pcm) // 2, "PCM_16")
    assert len(wav_header(16000, 0)) == 44


def test_streaming_wav_header_parses_in_soundfile_and_pyav() -> None:
    header = wav_stream_header(RATE)
    assert header[4:8] == header[40:44] == b"\xff\xff\xff\xff"
    x = make_tone(1.0, RATE)[:, 0]
    data = header + pcm16_bytes(x)
    from_sf, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE and len(from_sf) == len(x)
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
    from_av = np.concatenate(frames, axis=1)[0].astype(np.float32) / 32768
    np.testing.assert_allclose(from_av, from_sf, atol=1e-6)
    np.testing.assert_allclose(from_sf, x, atol=2 / 32767)


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_streamed_output_plays_like_the_one_shot_file(fmt: AudioFormat) -> None:
    x = make_tone(1.5, RATE)[:, 0]
    streamed = b"".join(_stream(fmt, x))
    one_shot = encode_audio(x, RATE, fmt)
    if fmt in (AudioFormat.PCM, AudioFormat.OPUS, AudioFormat.AAC):
        assert streamed == one_shot  # same encoder, deterministic (bitexact) muxing
        return
    a, b = _decode(one_shot, fmt), _decode(streamed, fmt)
    lag = STREAM_LAG.get(fmt, 0) - ONESHOT_LAG.get(fmt, 0)
    assert best_lag(a, b, 4096) == lag
    b = b[lag:]
    if fmt == AudioFormat.MP3:
        assert compare(a, b).correlation > 0.9999
    else:  # WAV, FLAC: lossless, so sample-identical
        np.testing.assert_array_equal(a, b[: len(a)])
        assert len(a) == len(b)


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_streaming_sends_bytes_before_the_end(fmt: AudioFormat) -> None:
    """For TTS the first audio must leave before generation ends, not at flush()."""
    parts = _stream(fmt, make_tone(2.0, RATE)[:, 0], chunk=RATE // 10)
    early = sum(len(p) for p in parts[:10])  # after the first second
    assert early > 0.25 * sum(len(p) for p in parts)


def test_streaming_encoder_ends_once() -> None:
    encoder = StreamingEncoder("wav", RATE)
    encoder.write(np.zeros(100, np.float32))
    assert encoder.flush() == b""  # the header went out with the first write
    assert encoder.flush() == b""
    with pytest.raises(RuntimeError):
        encoder.write(np.zeros(10, np.float32))
    header_only = StreamingEncoder("wav", RATE)
    assert header_only.flush() == wav_stream_header(RATE)


def test_formats_media_types_and_errors() -> None:
    assert set(MEDIA_TYPES) == {f.value for f in AudioFormat}
    assert MEDIA_TYPES["mp3"] == "audio/mpeg" and MEDIA_TYPES["opus"] == "audio/ogg"
    with pytest.raises(InvalidInput, match="known: wav"):
        encode_audio(np.zeros(10, np.float32), RATE, "m4b")
    with pytest.raises(ValueError, match="mono"):
        encode_audio(np.zeros((10, 2), np.float32), RATE, "wav")
