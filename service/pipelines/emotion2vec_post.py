"""Emotion2vec pre- and post-processing in plain numpy: trim, chunks, merge, segments.

Kept apart from the pipeline so each step is a pure function a test can drive directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TRIM_FRAME_S = 0.02
TRIM_RELATIVE_DB = -40.0
"""A trim frame is speech when its RMS is within 40 dB of the loudest frame's..."""
TRIM_FLOOR_DBFS = -60.0
"""...and above -60 dBFS; a clip with no such frame is left untrimmed."""
TRIM_MARGIN_S = 0.1
SMOOTHING_S = 0.5
"""Frame probabilities are averaged over a centred 0.5 s window before segmenting."""


@dataclass(frozen=True)
class Label:
    token: str
    en: str
    zh: str
    emoji: str

    def as_dict(self, score: float) -> dict[str, Any]:
        return {"label": self.en, "zh": self.zh, "emoji": self.emoji, "score": round(score, 6)}


@dataclass(frozen=True)
class Span:
    """[start, end) in samples of the decoded clip."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ChunkOutput:
    """One chunk's share of a batch: what the graph said about it."""

    logits: np.ndarray  # [C]
    embedding: np.ndarray  # [D]
    frame_logits: np.ndarray  # [F, C], F = this chunk's valid frames

    @property
    def frames(self) -> int:
        return int(self.frame_logits.shape[0])


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    label: int
    score: float


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return out


def trim_silence(samples: np.ndarray, rate: int, min_samples: int) -> Span:
    """Energy-based trim of both ends (20 ms RMS frames, 40 dB below the peak, 0.1 s margin).

    Never trims to less than `min_samples`, and leaves all-quiet clips as they are: too
    short or silent is for the caller to judge on the original audio.
    """
    whole = Span(0, len(samples))
    hop = max(1, round(TRIM_FRAME_S * rate))
    n = len(samples) // hop
    if n == 0:
        return whole
    frames = samples[: n * hop].reshape(n, hop).astype(np.float64)
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    threshold = max(float(db.max()) + TRIM_RELATIVE_DB, TRIM_FLOOR_DBFS)
    loud = np.flatnonzero(db > threshold)
    if loud.size == 0:
        return whole
    margin = round(TRIM_MARGIN_S * rate)
    span = Span(max(0, int(loud[0]) * hop - margin),
                min(len(samples), (int(loud[-1]) + 1) * hop + margin))
    return span if span.length >= min_samples else whole


def chunk_spans(total: int, chunk_samples: int) -> list[Span]:
    """Equal chunks of at most `chunk_samples` (equal, so they batch with little padding)."""
    count = max(1, math.ceil(total / chunk_samples))
    size = math.ceil(total / count)
    return [Span(i * size, min(total, (i + 1) * size)) for i in range(count)]


def merge_utterance(chunks: list[ChunkOutput], head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [C], embedding [D]) of the whole clip.

    One chunk: the graph's own logits. Several: the mean of the chunk embeddings weighted by
    their frame counts (= the mean over every frame of the clip, as the model pools one
    chunk), then the classification head `head` ([C, D+1], bias last).
    """
    if len(chunks) == 1:
        return softmax(chunks[0].logits.astype(np.float64)), chunks[0].embedding
    weights = np.array([c.frames for c in chunks], np.float64)
    stacked = np.stack([c.embedding for c in chunks]).astype(np.float64)
    embedding = (weights[:, None] * stacked).sum(axis=0) / max(weights.sum(), 1.0)
    logits = head[:, :-1].astype(np.float64) @ embedding + head[:, -1]
    return softmax(logits), embedding.astype(np.float32)


def frame_timeline(chunks: list[ChunkOutput], spans: list[Span], offset: int, rate: int,
                   hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(start times [F] in seconds of the original clip, probabilities [F, C]), all chunks."""
    times = [(offset + span.start + hop * np.arange(c.frames)) / rate
             for c, span in zip(chunks, spans, strict=True)]
    probs = [softmax(c.frame_logits.astype(np.float64), axis=-1) for c in chunks]
    return np.concatenate(times), np.concatenate(probs)


def smooth(probs: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` frames (shorter at the edges)."""
    if window <= 1 or len(probs) <= 1:
        return probs
    cumsum = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0)])
    idx = np.arange(len(probs))
    lo = np.clip(idx - window // 2, 0, len(probs))
    hi = np.clip(idx + (window - 1) // 2 + 1, 0, len(probs))
    out: np.ndarray = (cumsum[hi] - cumsum[lo]) / (hi - lo)[:, None]
    return out


def segments(times: np.ndarray, probs: np.ndarray, start_s: float, end_s: float,
             frame_rate: float) -> list[Segment]:
    """Runs of one dominant emotion after smoothing, covering [start_s, end_s] without gaps.

    A segment starts at its first frame's start (the first at `start_s`) and ends where the
    next begins (the last at `end_s`); its score is its label's mean smoothed probability.
    """
    if len(times) == 0:
        return []
    smoothed = smooth(probs, max(1, round(SMOOTHING_S * frame_rate)))
    labels = smoothed.argmax(axis=1)
    cuts = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(labels)]])
    out = []
    for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
        seg_start = start_s if i == 0 else float(times[a])
        seg_end = end_s if i == len(starts) - 1 else float(times[b])
        label = int(labels[a])
        out.append(Segment(seg_start, seg_end, label, float(smoothed[a:b, label].mean())))
    return out
