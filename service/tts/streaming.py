"""Streaming pieces of TTS audio: overlapped token windows, piece stitching, a running limiter.

Design note (exact streaming). The Decoder and Vocos are stacks of non-causal convolutions
followed by an overlap-add iSTFT, so output sample s depends on mel frames within a fixed
radius R of s / hop (`receptive_field_tokens`: 52 tokens at real size, 13 for the tiny
pack). A window decoded over tokens [a, b) therefore gives exactly the full decode's
samples for tokens [a + R, b - R) (the same zero padding at a real start or end of the
sequence makes the edges exact too). `WindowPlanner` emits audio every `chunk_tokens`
new tokens once `lookahead` more tokens exist (the chunk doubles after each send up to
`max_chunk_tokens`: a small first chunk for early audio, then longer ones so the
overlap's extra decoding, (context + chunk + lookahead) / chunk, shrinks), decoding
tokens from `context` before the first unsent sample to the newest token: with context
and lookahead >= R the streamed samples equal the one-shot decode up to float rounding
(~1e-7); a smaller lookahead buys time to first audio at the price of a seam error,
which the benchmark measures.

Pieces (long text is generated as several sequences) are joined by `Stitcher`: a short
linear crossfade of the last `k = min(crossfade, len(out), len(piece))` samples. The
one-shot path runs the same `Stitcher` over whole pieces, so streamed and one-shot audio
stitch identically. The last `crossfade` samples are held back until the next piece (or
the end) arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PEAK = 0.95


def receptive_field_tokens(config: dict[str, Any], mel_frames_per_token: int = 2) -> int:
    """Radius (in tokens) of the decoder + vocos dependence of one output sample.

    Frames: DVAE decoder conv_in (two k3 convs) 2 + n_layer ConvNeXt blocks with k7 and
    dilation 2 (6 each) + out_conv k3 1; Vocos embed k7 3 + k7 blocks 3 each; iSTFT
    (n_fft 4 x hop, centred) 2 (ChatTTS 0.2.5 `dvae.py`, vocos 0.1.0). One spare token."""
    dec = int(config.get("decoder", {}).get("n_layer", 12))
    voc = int(config.get("vocos_layers", 8))
    n_fft, hop = int(config.get("n_fft", 1024)), int(config.get("hop_length", 256))
    frames = 2 + 6 * dec + 1 + 3 + 3 * voc + -(-n_fft // (2 * hop))
    return -(-frames // mel_frames_per_token) + 1


@dataclass(frozen=True)
class Window:
    """Decode tokens [start, stop), then send global samples [send_from, send_to)."""

    start: int
    stop: int
    send_from: int
    send_to: int


class WindowPlanner:
    """When to decode which window of a sequence's tokens while it is being generated."""

    def __init__(self, samples_per_token: int, chunk_tokens: int, context: int,
                 lookahead: int, max_chunk_tokens: int | None = None) -> None:
        self.spt = samples_per_token
        self.chunk = max(1, chunk_tokens)
        self.max_chunk = max(self.chunk, max_chunk_tokens or self.chunk)
        self.context = max(0, context)
        self.lookahead = max(1, lookahead)  # the last token's audio is half a token short
        self.sent = 0
        """Samples already planned."""

    def next(self, tokens: int, finished: bool) -> Window | None:
        """The window to decode now that `tokens` exist, or None to wait for more."""
        if finished:
            end = self.spt * tokens - self.spt // 2 if tokens else 0
        else:
            end = self.spt * (tokens - self.lookahead)
            if end - self.sent < self.spt * self.chunk:
                return None
        if end <= self.sent:
            return None
        start = max(0, self.sent // self.spt - self.context)
        window = Window(start=start, stop=tokens, send_from=self.sent, send_to=end)
        self.sent = end
        self.chunk = min(2 * self.chunk, self.max_chunk)
        return window

    def cut(self, window: Window, wave: np.ndarray) -> np.ndarray:
        """The samples to send from `wave`, the decode of `window`'s tokens."""
        offset = window.start * self.spt
        return wave[window.send_from - offset : window.send_to - offset]


class Stitcher:
    """Join pieces in order with a linear crossfade; feed chunks, get what can be sent."""

    def __init__(self, crossfade: int) -> None:
        self.crossfade = max(0, crossfade)
        self._held = np.zeros(0, np.float32)
        self._head = np.zeros(0, np.float32)
        self._merged = True  # the first piece has nothing to cross into
        self._started = False
        self.emitted = 0
        """Samples returned so far."""
        self.starts: list[int] = []
        """Where each piece's first sample lies in the joined audio (sample-exact: the
        crossfade makes a piece start `k` samples before its predecessor's end)."""
        self.ends: list[int] = []
        """Where each finished piece's audio ends (exclusive)."""

    def start_piece(self) -> None:
        if self._started:
            self._merged = False
        else:
            self.starts.append(0)
        self._started = True

    def feed(self, chunk: np.ndarray, piece_done: bool) -> np.ndarray:
        chunk = np.asarray(chunk, np.float32)
        if not self._merged:
            self._head = np.concatenate([self._head, chunk])
            if len(self._head) < self.crossfade and not piece_done:
                return np.zeros(0, np.float32)
            k = min(len(self._held), len(self._head), self.crossfade)
            fade = (np.arange(1, k + 1, dtype=np.float32) / (k + 1)) if k else np.zeros(0)
            mixed = self._held[len(self._held) - k:] * (1 - fade) + self._head[:k] * fade
            self.starts.append(self.emitted + len(self._held) - k)
            chunk = np.concatenate([self._held[: len(self._held) - k], mixed.astype(np.float32),
                                    self._head[k:]])
            self._held, self._head, self._merged = np.zeros(0, np.float32), self._head[:0], True
        out = np.concatenate([self._held, chunk])
        keep = min(self.crossfade, len(out))
        self._held = out[len(out) - keep:].copy()
        self.emitted += len(out) - keep
        if piece_done:
            self.ends.append(self.emitted + keep)
        return out[: len(out) - keep]

    def finish(self) -> np.ndarray:
        out, self._held = self._held, np.zeros(0, np.float32)
        self.emitted += len(out)
        return out


def stitch(pieces: list[np.ndarray], crossfade: int) -> np.ndarray:
    """One-shot join of whole pieces, by the same rules as a stream."""
    return stitch_with_spans(pieces, crossfade)[0]


def stitch_with_spans(pieces: list[np.ndarray], crossfade: int
                      ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`stitch`, and each piece's [start, end) in the joined audio (a stream's spans)."""
    stitcher = Stitcher(crossfade)
    parts = []
    for piece in pieces:
        stitcher.start_piece()
        parts.append(stitcher.feed(piece, piece_done=True))
    parts.append(stitcher.finish())
    joined = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return joined, list(zip(stitcher.starts, stitcher.ends, strict=True))


class RunningLimiter:
    """Streaming stand-in for one-shot peak limiting: the whole wave is not known yet, so
    the gain drops (never rises) as soon as a chunk would exceed the peak. Below the peak
    it does nothing, and the stream equals the one-shot output."""

    def __init__(self, peak: float = PEAK) -> None:
        self.peak = peak
        self.gain = 1.0

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        top = float(np.max(np.abs(chunk))) if chunk.size else 0.0
        if np.isfinite(top) and top * self.gain > self.peak:
            self.gain = self.peak / top
        if self.gain == 1.0:
            return chunk.astype(np.float32, copy=False)
        return (chunk * self.gain).astype(np.float32)
