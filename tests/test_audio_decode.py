"""service.audio.decode.decode_audio on real files in every upload format, made in the test."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio.decode import decode_audio, is_silent, require_audible, resample, rms_dbfs
from service.errors import InvalidInput, PayloadTooLarge
from tests.audio_fixtures import FORMATS, LOSSLESS, best_lag, compare, make_tone, write_audio

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"

# Leading samples a decoder keeps because the container cannot declare the codec's
# priming (ADTS); every other format must come back aligned to the sample.
EXPECTED_LAG = {"aac_adts": 1024}
# Decoded length may differ from the source by codec framing/padding (seconds).
DURATION_TOLERANCE = {"wav": 0.0, "flac": 0.0, "ogg_vorbis": 0.005, "opus": 0.001,
                      "mp3": 0.001, "webm_opus": 0.001, "m4a": 0.03, "m4a_faststart": 0.03,
                      "aac_adts": 0.05}
MIN_CORRELATION = {"ogg_vorbis": 0.999, "opus": 0.999, "webm_opus": 0.999, "mp3": 0.999,
                   "m4a": 0.98, "m4a_faststart": 0.98, "aac_adts": 0.98}


@pytest.mark.parametrize("rate,channels", [(48000, 1), (44100, 2)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_source_signal(fmt: str, rate: int, channels: int) -> None:
    source = make_tone(2.0, rate, channels)
    expected = source.mean(axis=1)
    decoded = decode_audio(write_audio(source, rate, fmt), target_rate=rate, max_seconds=30)

    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.source_channels == channels
    assert decoded.sample_rate == rate and not decoded.truncated and not decoded.incomplete
    assert abs(decoded.duration_s - 2.0) <= DURATION_TOLERANCE[fmt] + 1e-9
    lag = best_lag(expected, decoded.samples, max_lag=4096)
    assert lag == EXPECTED_LAG.get(fmt, 0)
    got = decoded.samples[lag:]
    if fmt in LOSSLESS:
        assert np.max(np.abs(got - expected)) < 1e-4  # 16-bit quantisation only
    else:
        assert compare(expected, got).correlation > MIN_CORRELATION[fmt]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("container,subtype", [
    ("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("AIFF", "PCM_16"), ("WAV", "PCM_24"),
    ("WAV", "PCM_U8"), ("WAV", "FLOAT")])
def test_lossless_samples_are_libsndfiles_own_floats(container: str, subtype: str,
                                                      channels: int) -> None:
    """16-bit PCM is read as int16 and scaled in numpy (libsndfile's own float conversion
    cost most of a WAV's decode): bit for bit what libsndfile returns as float32, full
    scale and the most negative sample included, like every other sample format."""
    rng = np.random.default_rng(7)
    source = rng.uniform(-1.0, 1.0, (48000, channels)).astype(np.float32)
    source[:4] = [[-1.0], [1.0], [0.0], [-0.5]] if channels == 1 else [
        [-1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [-0.5, 0.25]]
    buffer = io.BytesIO()
    sf.write(buffer, source, 48000, format=container, subtype=subtype)
    data = buffer.getvalue()
    reference = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
    expected = reference[:, 0] if channels == 1 else (
        (reference[:, 0] + reference[:, 1]) * np.float32(0.5))
    decoded = decode_audio(data, target_rate=48000, max_seconds=30)
    np.testing.assert_array_equal(decoded.samples, expected)


def test_m4a_with_moov_at_the_end_and_at_the_start_decode_alike() -> None:
    source = make_tone(1.5, 44100, 2)
    tail, head = write_audio(source, 44100, "m4a"), write_audio(source, 44100, "m4a_faststart")
    assert tail.index(b"moov") > tail.index(b"mdat")
    assert head.index(b"moov") < head.index(b"mdat")
    a = decode_audio(tail, target_rate=16000, max_seconds=10)
    b = decode_audio(head, target_rate=16000, max_seconds=10)
    assert a.container == b.container == "mov"
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-6)


@pytest.mark.parametrize("target", [48000, 16000])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_44k_stereo_is_resampled_and_downmixed(fmt: str, target: int) -> None:
    source = make_tone(2.0, 44100, 2)
    decoded = decode_audio(write_audio(source, 44100, fmt), target_rate=target, max_seconds=30)
    # the reference is the same analytic signal computed directly at the target rate
    expected = make_tone(2.0, target, 2).mean(axis=1)
    assert decoded.sample_rate == target
    assert decoded.source_rate == (48000 if fmt == "opus" else 44100)
    assert len(decoded.samples) == len(expected)
    sim = compare(expected, decoded.samples)
    if fmt in LOSSLESS:
        assert sim.snr_db > 60
    else:
        assert sim.correlation > 0.999


def test_resample_length_identity_and_no_aliasing() -> None:
    tone = make_tone(1.0, 44100)[:, 0]
    np.testing.assert_array_equal(resample(tone, 44100, 44100), tone)
    assert len(resample(tone, 44100, 48000)) == 48000
    assert len(resample(tone[:441], 44100, 16000)) == 160
    assert len(resample(np.zeros(0, np.float32), 44100, 16000)) == 0
    # an 8.3 kHz tone is above 16 kHz's Nyquist: it must vanish, not fold down to 7.7 kHz
    t = np.arange(44100) / 44100
    high = (0.5 * np.sin(2 * np.pi * 8300 * t)).astype(np.float32)
    assert rms_dbfs(resample(high, 44100, 16000)[800:-800]) < rms_dbfs(high) - 90


def test_long_audio_is_rejected_or_truncated_at_the_cap() -> None:
    for fmt in ("wav", "flac", "mp3", "opus"):
        data = write_audio(make_tone(5.0, 48000), 48000, fmt)
        with pytest.raises(PayloadTooLarge, match="2 s limit"):
            decode_audio(data, target_rate=16000, max_seconds=2.0)
        cut = decode_audio(data, target_rate=16000, max_seconds=2.0, on_long="truncate")
        assert cut.truncated and len(cut.samples) == 32000
        assert cut.original_duration_s == pytest.approx(5.0, abs=0.05)
        whole = decode_audio(data, target_rate=16000, max_seconds=5.0)
        assert not whole.truncated and whole.original_duration_s == whole.duration_s
        # the kept part is the start of the whole, not some other window
        np.testing.assert_allclose(cut.samples[:30000], whole.samples[:30000], atol=2e-3)


def test_byte_and_minimum_length_limits_name_the_limit() -> None:
    data = write_audio(make_tone(0.5, 16000), 16000, "wav")
    with pytest.raises(PayloadTooLarge, match=f"limit is {len(data) - 1} bytes"):
        decode_audio(data, target_rate=16000, max_seconds=10, max_bytes=len(data) - 1)
    assert decode_audio(data, target_rate=16000, max_seconds=10, max_bytes=len(data))
    with pytest.raises(InvalidInput, match="minimum is 1 s"):
        decode_audio(data, target_rate=16000, max_seconds=10, min_seconds=1.0)


def test_silence_helpers() -> None:
    quiet = make_tone(1.0, 16000, amplitude=1e-4)[:, 0]
    loud = make_tone(1.0, 16000)[:, 0]
    assert is_silent(np.zeros(100, np.float32)) and is_silent(quiet)
    assert not is_silent(loud) and not is_silent(quiet, threshold_db=-90)
    assert rms_dbfs(np.zeros(0, np.float32)) == -np.inf
    require_audible(loud)
    with pytest.raises(InvalidInput, match="silent"):
        require_audible(quiet)


def _speech_clips(n: int) -> list[Path]:
    if not SPEECH.is_dir():
        pytest.skip(f"shared speech clips absent ({SPEECH})")
    return sorted(SPEECH.glob("*.flac"))[:n]


def test_real_speech_clips_decode_exactly_and_resample() -> None:
    for path in _speech_clips(4):
        data = path.read_bytes()
        reference, rate = sf.read(path, dtype="float32")
        native = decode_audio(data, target_rate=rate, max_seconds=60)
        np.testing.assert_array_equal(native.samples, reference)
        at16k = decode_audio(data, target_rate=16000, max_seconds=60, min_seconds=1.0)
        assert len(at16k.samples) == round(len(reference) * 16000 / rate)
        assert not is_silent(at16k.samples)
        assert compare(resample(reference, rate, 16000), at16k.samples).correlation > 0.9999


def test_real_speech_survives_lossy_reencoding() -> None:
    for path in _speech_clips(2):
        reference, rate = sf.read(path, dtype="float32")
        for fmt in ("mp3", "opus", "m4a"):
            got = decode_audio(write_audio(reference, rate, fmt), target_rate=rate,
                               max_seconds=60).samples
            assert compare(reference, got).correlation > 0.95, (path.name, fmt)
