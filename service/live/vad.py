"""Utterances of a live stream, found by WebRTC's voice-activity detector (webrtcvad).

webrtcvad (Google's WebRTC VAD, C, no dependencies) labels 30 ms frames of 16-bit PCM as
speech or not. An utterance starts at its first voiced frame and ends once
`min_silence_ms` of unvoiced frames follow its last voiced one; `padding_ms` of audio is
kept on each side (after: at most `min_silence_ms`, so an utterance is cut as soon as it
is known to be over), an utterance voiced for less than `min_speech_ms` is not one, and
one that runs `max_utterance_s` is cut there (its speech goes on in the next).

While an utterance is open, `so_far` gives it as it would be if it ended now (from its
start to its last voiced frame plus `padding_ms`): what a partial result is computed on.
Once `padding_ms` of silence follows its speech, `ending` gives the same: its audio is
complete if it ends there, which `min_silence_ms` of silence will confirm (or more speech
refute); an early start of its result is computed on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from service.live.protocol import EmotionConfig
from service.live.windows import SampleBuffer

VAD_RATES = (8000, 16000, 32000, 48000)
FRAME_MS = 30


@dataclass(frozen=True)
class Utterance:
    index: int
    start: int
    """Sample offsets in the stream at the detector's (the model's) rate."""
    end: int
    samples: np.ndarray


def _pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


class Endpointer:
    def __init__(self, config: EmotionConfig, rate: int) -> None:
        if rate not in VAD_RATES:
            raise ValueError(f"webrtcvad takes {VAD_RATES} Hz, not {rate}")
        self.rate = rate
        self.frame = rate * FRAME_MS // 1000
        self.vad = webrtcvad.Vad(config.vad_aggressiveness)
        ms = rate // 1000
        self.min_speech = config.min_speech_ms * ms
        self.min_silence = config.min_silence_ms * ms
        self.pad_before = config.padding_ms * ms
        self.pad_after = min(config.padding_ms, config.min_silence_ms) * ms
        self.confirm_s = (self.min_silence - self.pad_after) / rate
        """Audio after an utterance's end before it is known to be over."""
        self.max_length = round(config.max_utterance_s * rate)
        self.buffer = SampleBuffer()
        self._pos = 0
        """Next sample the detector has not seen."""
        self._first_voiced: int | None = None
        """First voiced sample of the open utterance (None: none is open)."""
        self._start = 0
        self._last_voiced = 0
        """End of the open utterance's last voiced frame."""
        self._floor = 0
        """An utterance never starts before the previous one ended."""
        self._index = 0
        self.voiced_frames = 0
        self._ending: Utterance | None = None
        """What `ending` last returned: asked after every block, it copies the samples
        once per span, not once per block."""

    @property
    def total(self) -> int:
        return self.buffer.total

    def push(self, block: np.ndarray) -> list[Utterance]:
        self.buffer.push(block)
        done: list[Utterance] = []
        while self._pos + self.frame <= self.total:
            frame = self.buffer.span(self._pos, self._pos + self.frame)
            voiced = self.vad.is_speech(_pcm16(frame), self.rate)
            self._pos += self.frame
            utterance = self._step(voiced)
            if utterance is not None:
                done.append(utterance)
        keep = self._start if self._first_voiced is not None else self._pos - self.pad_before
        self.buffer.drop_before(max(0, min(keep, self._pos - self.pad_before)))
        return done

    def _step(self, voiced: bool) -> Utterance | None:
        frame_start = self._pos - self.frame
        if voiced:
            self.voiced_frames += 1
            if self._first_voiced is None:
                self._first_voiced = frame_start
                self._start = max(self._floor, frame_start - self.pad_before, 0)
            self._last_voiced = self._pos
            if self._pos - self._start >= self.max_length:  # cut; the speech goes on
                cut = self._close(self._pos)
                self._first_voiced, self._start = self._pos, self._pos
                return cut
            return None
        if self._first_voiced is not None and self._pos - self._last_voiced >= self.min_silence:
            return self._close(self._last_voiced + self.pad_after)
        return None

    def open_span(self) -> tuple[int, int, int] | None:
        """The open utterance so far as (index, start, end), once it has `min_speech` of
        voice (so its final will come, under this index): from its start to its last voiced
        frame plus the padding after, as if it ended now; None while there is none."""
        if self._first_voiced is None or self._last_voiced - self._first_voiced < self.min_speech:
            return None
        return self._index, self._start, min(self._pos, self._last_voiced + self.pad_after)

    def so_far(self) -> Utterance | None:
        """The open utterance's audio so far (see open_span)."""
        span = self.open_span()
        if span is None:
            return None
        index, start, end = span
        return Utterance(index, start, end, self.buffer.span(start, end))

    def ending(self) -> Utterance | None:
        """The open utterance as it will be if the silence after it goes on to
        `min_silence` (the padding after its speech has all arrived, so this equals the
        utterance `push` or `finish` then returns); None while it is still voiced."""
        if self._first_voiced is None or self._pos - self._last_voiced < self.pad_after:
            return None
        span = self.open_span()
        if span is None:
            return None
        last = self._ending
        if last is None or (last.index, last.start, last.end) != span:
            index, start, end = span
            self._ending = Utterance(index, start, end, self.buffer.span(start, end))
        return self._ending

    def finish(self) -> list[Utterance]:
        if self._first_voiced is None:
            return []
        utterance = self._close(min(self.total, self._last_voiced + self.pad_after))
        return [] if utterance is None else [utterance]

    def _close(self, end: int) -> Utterance | None:
        assert self._first_voiced is not None
        voiced = self._last_voiced - self._first_voiced
        start = self._start
        self._first_voiced = None
        self._floor = end
        if voiced < self.min_speech:
            return None
        utterance = Utterance(self._index, start, end, self.buffer.span(start, end))
        self._index += 1
        return utterance
