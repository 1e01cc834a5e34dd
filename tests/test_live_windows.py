"""CLAP's live windows: cut at the stream's rate, each resampled alone, complete with the
frame that holds their last sample."""

from __future__ import annotations

import numpy as np
import pytest

from service.audio.decode import resample
from service.live.analysis import StreamAnalyser, WindowPlan
from service.live.windows import SlidingWindows, Window

CLAP_RATE = 48_000


def _analyser(hop_s: float) -> StreamAnalyser:
    return StreamAnalyser(windows=WindowPlan(10.0, hop_s, CLAP_RATE), endpointer=None,
                          partial_every=None, max_stream_s=600, count_audio=lambda s: None)


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t / 7)).astype(np.float32)


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_a_window_is_found_with_the_frame_that_holds_its_last_sample(rate: int) -> None:
    """100 ms frames, hop 2 s: the window ending at 2 s comes out of the frame ending at
    2 s, not the one after it (a streamed resampler held its last milliseconds back)."""
    audio = _tone(12.4, rate)
    frame = rate // 10
    analyser = _analyser(2.0)
    found_at: list[tuple[int, Window]] = []
    for i in range(0, len(audio), frame):
        found = analyser.push(audio[i:i + frame], rate, 0.0)
        found_at += [(i + frame, job) for job in found.jobs if isinstance(job, Window)]
    ends = [end for end, _ in found_at]
    assert ends == [round(k * 2.0 * rate) for k in range(1, 7)]
    for end, window in found_at:
        assert (window.end, window.rate) == (end, rate)
        assert window.start == max(0, end - 10 * rate)


@pytest.mark.parametrize("rate", [16_000, 22_050, 48_000])
def test_each_window_is_its_span_resampled_alone(rate: int) -> None:
    """What /classify does to an upload of the same samples (service.audio.decode)."""
    audio = _tone(13.0, rate)
    windows = SlidingWindows(10.0, 3.0, rate, CLAP_RATE)
    cut = windows.push(audio[:7 * rate]) + windows.push(audio[7 * rate:]) + windows.finish()
    assert [(w.start, w.end) for w in cut] == [
        (0, 3 * rate), (0, 6 * rate), (0, 9 * rate), (2 * rate, 12 * rate),
        (3 * rate, 13 * rate)]
    for w in cut:
        expected = resample(audio[w.start:w.end], rate, CLAP_RATE)
        np.testing.assert_array_equal(w.samples, expected)
        assert len(w.samples) == round((w.end - w.start) * CLAP_RATE / rate)
    assert len(cut[-1].samples) == 10 * CLAP_RATE  # a full window is CLAP's 10 s exactly


def test_a_hop_shorter_than_a_sample_is_one_sample() -> None:
    """LIVE_MIN_HOP_S may be set below a sample of a slow stream: a window per sample."""
    windows = SlidingWindows(10.0, 1e-6, 8_000, CLAP_RATE)
    assert [w.end for w in windows.push(np.zeros(3, np.float32))] == [1, 2, 3]
    with pytest.raises(ValueError, match="positive"):
        SlidingWindows(10.0, 0.0, 8_000, CLAP_RATE)
