"""A live stream's per-frame analysis: decoded samples in; the windows, utterances and
partial due out. Pure per-stream state, no asyncio.

It holds the source-rate check, the stream-length limit, CLAP's sliding windows (cut at
the source rate, each resampled alone), the streamed resampler to the emotion model's
rate, the endpointer and the partials' schedule: work that grows with a frame's size (up
to LIVE_MAX_FRAME_BYTES of audio), so the session runs it off the event loop, one call at
a time per stream, and only turns the `Found` into jobs on the loop
(service/live/session.py says where each call runs). A call that finds the stream broken
(its rate changed, it is too long) raises ProtocolError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.live.decode import Resampler
from service.live.protocol import ProtocolError
from service.live.vad import Endpointer, Utterance
from service.live.windows import SlidingWindows, Window


@dataclass(frozen=True)
class WindowPlan:
    """CLAP's windows of a stream, in seconds and at the model's rate."""

    window_s: float
    hop_s: float
    model_rate: int


@dataclass
class Found:
    """What one call found, for the session to submit on the loop."""

    jobs: list[Window | Utterance] = field(default_factory=list)
    """Complete windows and utterances, in the order they are submitted."""
    partial: Utterance | None = None
    """The open utterance so far, when a partial of it is due."""
    ending: Utterance | None = None
    """The open utterance once its audio is complete, before its end is confirmed
    (Endpointer.ending); None when there is none, or when speech goes on."""
    samples: int = 0
    """Audio samples received so far (at the source rate)."""
    rate: int | None = None
    """The source rate (None until the first samples)."""
    received_at: float = 0.0
    """When the call's samples arrived (monotonic): results' lag is measured from here."""


class StreamAnalyser:
    def __init__(self, *, windows: WindowPlan | None, endpointer: Endpointer | None,
                 partial_every: int | None, max_stream_s: float,
                 count_audio: Callable[[float], None]) -> None:
        """`windows`: CLAP's windows, None: no classify (they are cut once the stream's
        rate is known); `partial_every`: growth (samples at the emotion rate) between
        partials, None: no partials; `count_audio(seconds)` is called with each block's
        length (from the calling thread: it must be thread-safe, as prometheus counters
        are)."""
        self.plan = windows
        self.windows: SlidingWindows | None = None
        self.endpointer = endpointer
        self.partial_every = partial_every
        self.max_stream_s = max_stream_s
        self.count_audio = count_audio
        self.rate: int | None = None
        self.samples = 0
        self._emotion_resampler: Resampler | None = None
        self._partial_due: tuple[int, int] = (-1, 0)
        """(utterance index, its length at which the next partial is due)."""

    def push(self, block: np.ndarray, rate: int, received_at: float) -> Found:
        """Take the next decoded block (mono float32 at `rate`) that arrived at
        `received_at` (monotonic: when the socket delivered it, not when this runs)."""
        found = Found(received_at=received_at)
        self._take(block, rate, last=False, found=found)
        if self.endpointer is not None:
            found.partial = self._partial_due_now()
            found.ending = self.endpointer.ending()
        return self._totals(found)

    def finish(self) -> Found:
        """At input.done: the resampler's tail, the last window and utterance."""
        found = Found(received_at=time.monotonic())
        if self.rate is None:
            return self._totals(found)
        self._take(np.zeros(0, np.float32), self.rate, last=True, found=found)
        if self.windows is not None:
            found.jobs += self.windows.finish()
        if self.endpointer is not None:
            found.jobs += self.endpointer.finish()
        return self._totals(found)

    def _totals(self, found: Found) -> Found:
        found.samples, found.rate = self.samples, self.rate
        return found

    def _take(self, block: np.ndarray, rate: int, *, last: bool, found: Found) -> None:
        if self.rate is None:
            self.rate = rate
            if self.plan is not None:
                self.windows = SlidingWindows(self.plan.window_s, self.plan.hop_s, rate,
                                              self.plan.model_rate)
            if self.endpointer is not None:
                self._emotion_resampler = Resampler(rate, self.endpointer.rate)
        elif rate != self.rate:
            raise ProtocolError("unsupported_audio", f"the stream changed its sample rate "
                                f"from {self.rate} to {rate} Hz")
        self.samples += len(block)
        if self.samples > self.max_stream_s * rate:
            raise ProtocolError("stream_too_long", f"more than {self.max_stream_s:g} s of "
                                "audio (AUDIOSERVE_LIVE_MAX_STREAM_SECONDS); open a new stream")
        self.count_audio(len(block) / rate)
        if self.windows is not None:
            found.jobs += self.windows.push(block)
        if self.endpointer is not None:
            assert self._emotion_resampler is not None
            found.jobs += self.endpointer.push(self._emotion_resampler(block, last))

    def _partial_due_now(self) -> Utterance | None:
        """The open utterance so far if it has grown `partial_every` since the last partial
        fell due (whether the session then starts, coalesces or skips it)."""
        assert self.endpointer is not None
        if self.partial_every is None:
            return None
        span = self.endpointer.open_span()
        if span is None:
            return None
        index, start, end = span
        due_index, due_at = self._partial_due
        if index != due_index:  # a new utterance: its first partial after one period
            due_at = self.partial_every
        if end - start < due_at:
            self._partial_due = (index, due_at)
            return None
        self._partial_due = (index, end - start + self.partial_every)
        return self.endpointer.so_far()
