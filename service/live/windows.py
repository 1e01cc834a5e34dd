"""CLAP's sliding windows over a live stream: one window ends every hop of audio.

A window is the last `window` samples (CLAP's 10 s) before its end, or everything since
the stream began while that is shorter: exactly the clip `/classify` would be given, so
its scores are `/classify`'s. Windows are cut at the stream's own rate and each is
resampled to CLAP's on its own, as `/classify` resamples an upload of those samples: a
window is complete with its last source sample (a streamed resampler would hold its last
milliseconds back until the next frame came, one frame of lag) and equals the route to
the bit. Only the samples the next window needs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.audio.decode import resample


@dataclass(frozen=True)
class Window:
    index: int
    start: int
    """Sample offsets in the stream at its own rate."""
    end: int
    rate: int
    """The stream's rate."""
    samples: np.ndarray
    """The span [start, end), at the model's rate."""
    model_start: int | None = None
    """`start` at the model's rate where `samples` are the stream's own (it is at that
    rate), so two windows' overlaps hold the same numbers and their log-mel frames can
    be shared (service.audio.logmel_cache); None where each was resampled alone."""


class SampleBuffer:
    """The stream's recent samples as the blocks they came in (no copy per block): cut
    a span out, drop what is no longer needed."""

    def __init__(self) -> None:
        self.total = 0
        """Samples received so far (the stream offset of the end of the buffer)."""
        self._blocks: list[np.ndarray] = []
        self._base = 0
        """Stream offset of the first kept block's first sample."""

    def push(self, block: np.ndarray) -> None:
        if len(block):
            self._blocks.append(np.ascontiguousarray(block, np.float32))
            self.total += len(block)

    def span(self, start: int, end: int) -> np.ndarray:
        """A copy of the samples [start, end) of the stream (they must still be kept)."""
        if start < self._base or end > self.total:
            raise ValueError(f"span {start}:{end} outside the kept {self._base}:{self.total}")
        parts, offset = [], self._base
        for block in self._blocks:
            lo, hi = max(start, offset), min(end, offset + len(block))
            if lo < hi:
                parts.append(block[lo - offset:hi - offset])
            offset += len(block)
            if offset >= end:
                break
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def drop_before(self, offset: int) -> None:
        """Forget whole blocks that end at or before `offset`."""
        while self._blocks and self._base + len(self._blocks[0]) <= offset:
            self._base += len(self._blocks.pop(0))


class SlidingWindows:
    def __init__(self, window_s: float, hop_s: float, rate: int, model_rate: int) -> None:
        """Windows of `window_s` every `hop_s` (at least one sample) of a stream at
        `rate`, resampled to `model_rate`."""
        if window_s <= 0 or hop_s <= 0:
            raise ValueError("window and hop must be positive")
        self.window = max(1, round(window_s * rate))
        self.hop = max(1, round(hop_s * rate))
        self.rate = rate
        self.model_rate = model_rate
        self.buffer = SampleBuffer()
        self._next_end = self.hop
        self._index = 0
        self._last_end = 0

    @property
    def total(self) -> int:
        return self.buffer.total

    def push(self, block: np.ndarray) -> list[Window]:
        """Add samples; the windows that are now complete, in order."""
        self.buffer.push(block)
        windows = []
        while self._next_end <= self.total:
            windows.append(self._cut(self._next_end))
            self._next_end += self.hop
        # the last window (at finish) may end a hop before the next one
        self.buffer.drop_before(self._next_end - self.hop - self.window)
        return windows

    def finish(self) -> list[Window]:
        """At the end of input: a last window ending at the last sample, if any is unscored."""
        if self.total > self._last_end:
            return [self._cut(self.total)]
        return []

    def _cut(self, end: int) -> Window:
        start = max(0, end - self.window)
        samples = resample(self.buffer.span(start, end), self.rate, self.model_rate)
        own = self.rate == self.model_rate
        window = Window(self._index, start, end, self.rate, samples, start if own else None)
        self._index += 1
        self._last_end = end
        return window
