"""Audio SLOs of one streamed TTS response, as a player that starts at the first chunk
would live them (every streamed path: HTTP audio, SSE, WebSocket).

Design note. A player that starts playing when the first chunk arrives has audio until
`play_end` (the first chunk's arrival plus all audio received since, plus any time it sat
empty). A chunk that arrives after `play_end` leaves the player silent for the
difference: that is an underrun (a gap). The clock is the moment a chunk is handed to
the transport (the server's side: network time is not seen). Time to first audio counts
from when the stream was opened (for a live utterance: its first sentence). The real-time
factor is wall time from open to the last chunk over the audio's duration (< 1: faster
than real time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service.runtime.metrics import Metrics


class AudioClock:
    def __init__(self, metrics: Metrics, path: str, sample_rate: int, gap_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.metrics = metrics
        self.path = path
        """Label: `http`, `sse` or `ws`."""
        self.rate = sample_rate
        self.gap_s = gap_s
        self.clock = clock
        self.started = clock()
        self.first: float | None = None
        self.last: float | None = None
        self.play_end = 0.0
        self.audio_s = 0.0
        self.underrun_s = 0.0
        self.max_gap_s = 0.0
        self.finished = False

    def chunk(self, samples: int) -> None:
        """`samples` of audio were handed to the transport now."""
        now = self.clock()
        m = self.metrics
        if self.first is None:
            self.first = self.play_end = now
            m.tts_first_audio.labels(self.path).observe(now - self.started)
        else:
            assert self.last is not None
            m.tts_chunk_interval.labels(self.path).observe(now - self.last)
        if now > self.play_end:
            gap = now - self.play_end
            self.underrun_s += gap
            self.max_gap_s = max(self.max_gap_s, gap)
        self.play_end = max(now, self.play_end) + samples / self.rate
        self.audio_s += samples / self.rate
        self.last = now

    def finish(self) -> None:
        """The stream ended whole: its real-time factor, underrun and gap verdict."""
        if self.finished or self.first is None or self.last is None or not self.audio_s:
            return
        self.finished = True
        m = self.metrics
        m.tts_real_time_factor.labels(self.path).observe((self.last - self.started)
                                                         / self.audio_s)
        m.tts_underrun.labels(self.path).observe(self.underrun_s)
        smooth = self.max_gap_s <= self.gap_s
        m.tts_streams.labels(self.path, "smooth" if smooth else "gapped").inc()

    def summary(self) -> dict[str, Any]:
        """What the SSE path's final event and the WebSocket's `session.done` state."""
        first = None if self.first is None else round(self.first - self.started, 4)
        return {"first_audio_s": first, "audio_s": round(self.audio_s, 4),
                "underrun_s": round(self.underrun_s, 4),
                "max_gap_s": round(self.max_gap_s, 4)}
