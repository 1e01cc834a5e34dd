"""CLAP's sliding windows over a live stream: one window ends every hop of audio.

A window is the last `window` samples (CLAP's 10 s) before its end, or everything since
the stream began while that is shorter: exactly the clip `/classify` would be given, so
its scores are `/classify`'s. Only the samples the next window needs are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    index: int
    start: int
    """Sample offsets in the stream at the model's rate."""
    end: int
    samples: np.ndarray


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
    def __init__(self, window: int, hop: int) -> None:
        if window <= 0 or hop <= 0:
            raise ValueError("window and hop must be positive")
        self.window = window
        self.hop = hop
        self.buffer = SampleBuffer()
        self._next_end = hop
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
        window = Window(self._index, start, end, self.buffer.span(start, end))
        self._index += 1
        self._last_end = end
        return window
