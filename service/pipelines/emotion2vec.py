"""Emotion2Vec+ speech emotion recognition on ONNX Runtime.

Design note. A request is decoded to 16 kHz mono, optionally trimmed of silence at both
ends (energy-based, see `emotion2vec_post.trim_silence`), and cut into equal chunks of at
most `emotion_chunk_seconds` (the attention bias grows with the square of the frames).
Each chunk is one batcher item with `length` = its samples, so the batcher groups similar
lengths and keeps each batch's padded samples within `emotion_max_batch_seconds` (the
graph's memory grows with them: four 30 s chunks took +1.9 GB, one +0.46 GB); the batch
function pads to the longest and passes `lengths`, and the graph masks every stage, so a
padded item gives what it gives alone. The graph returns, per item, the
utterance logits and embedding (masked mean of frame features, which `proj` maps to the
logits) and the per-frame logits (the same `proj` per frame, 50 frames/s). Several chunks
merge as: utterance = frame-count-weighted mean of the chunk embeddings, then the head
(`head.npy` of the pack) -- equal to pooling over every frame of the clip; frames = the
concatenated timeline, segmented after a 0.5 s moving average of the probabilities.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.audio.decode import MinimumAudio, decode_audio
from service.errors import PackError
from service.pipelines import emotion2vec_post as post
from service.pipelines.base import LoadContext
from service.runtime.admission import request_deadline
from service.runtime.packs import ModelPack
from service.runtime.sessions import GraphRunner, open_graph
from service.seam.handoff import BatchQueue

MERGE_RULE = "frame-weighted mean of chunk embeddings, then the classification head"


class Granularity(enum.Enum):
    UTTERANCE = "utterance"
    FRAME = "frame"


@dataclass(frozen=True)
class EmotionOptions:
    granularity: Granularity = Granularity.UTTERANCE
    return_embedding: bool = False
    trim_silence: bool = False


@dataclass(frozen=True)
class FrameScores:
    times_s: np.ndarray  # [F] start time of each frame in the original clip
    probabilities: np.ndarray  # [F, C] in label order
    segments: list[post.Segment]


@dataclass(frozen=True)
class EmotionResult:
    labels: tuple[post.Label, ...]
    probabilities: np.ndarray  # [C] in label order
    embedding: np.ndarray | None
    duration_s: float
    analysed: post.Span
    chunks: int
    frames: FrameScores | None
    timings_ms: dict[str, float]

    def ranked(self) -> list[tuple[post.Label, float]]:
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.labels[i], float(self.probabilities[i])) for i in order]


@dataclass(frozen=True)
class EmotionConstants:
    sample_rate: int
    labels: tuple[post.Label, ...]
    min_samples: int
    hop_samples: int
    frame_rate: float

    @classmethod
    def from_pack(cls, pack: ModelPack) -> EmotionConstants:
        c = pack.constants
        try:
            labels = tuple(post.Label(str(x["token"]), str(x["en"]), str(x["zh"]),
                                      str(x["emoji"])) for x in c["labels"])
            return cls(sample_rate=int(c["sample_rate"]), labels=labels,
                       min_samples=int(c["min_samples"]), hop_samples=int(c["hop_samples"]),
                       frame_rate=float(c["frame_rate"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PackError(f"{pack.root}/manifest.json: bad emotion2vec constants ({exc})"
                            ) from exc


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class Emotion2vecPipeline:
    name = "emotion2vec"
    concurrent_batches = True

    def __init__(self, pack: ModelPack, ctx: LoadContext, runner: GraphRunner | None,
                 head: np.ndarray) -> None:
        self.pack = pack
        self.ctx = ctx
        self.settings = ctx.settings
        self.precision = ctx.precision
        self.provider = runner.provider if runner is not None else ctx.runtime.provider
        self.constants = EmotionConstants.from_pack(pack)
        self.minimum = MinimumAudio("emotion2vec", self.constants.min_samples,
                                    "the model's first frame")
        self.head = head
        self._runner = runner
        self._batcher: BatchQueue[np.ndarray, post.ChunkOutput] | None = None

    @classmethod
    def load(cls, pack: ModelPack, ctx: LoadContext) -> Emotion2vecPipeline:
        """Open the session (where the seam runs models) and read the head (synchronous:
        called in a thread)."""
        path, _ = pack.graph("model", ctx.precision)
        runner = open_graph(path, ctx.runtime) if ctx.seam.runs_models else None
        head = np.load(pack.file("head")).astype(np.float32)
        labels = len(pack.constants.get("labels", []))
        if head.ndim != 2 or head.shape[0] != labels:
            raise PackError(f"{pack.file('head')}: shape {head.shape}, expected "
                            f"[{labels}, embed_dim + 1]")
        return cls(pack, ctx, runner, head)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        budget = max(1, round(self.settings.emotion_max_batch_seconds
                              * self.constants.sample_rate))
        self._batcher = self.ctx.seam.queue(  # uploads announce themselves while they decode
            "emotion2vec", "emotion2vec", self._run_batch,
            # the graph's memory grows with the padded batch: long chunks run few at a time
            replace(self.ctx.batch, announced_arrivals=True, max_padded_units=budget),
            self.ctx.metrics.observer("emotion2vec"),
        )
        self._batcher.start()
        if self.settings.warmup:
            noise = np.random.default_rng(0).standard_normal(self.constants.sample_rate)
            clip = 0.1 * noise.astype(np.float32)
            await self._batcher.calibrate(clip, length=len(clip))

    async def stop(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    @property
    def healthy(self) -> bool:
        return self._batcher is not None and self._batcher.running

    def info(self) -> dict[str, Any]:
        m = self.pack.manifest
        return {
            "id": "emotion2vec", "object": "model", "kind": "emotion2vec", "demo": m.demo,
            "source": m.source, "precision": self.precision, "provider": self.provider,
            "labels": [label.en for label in self.constants.labels],
            "sample_rate": self.constants.sample_rate, "frame_rate": self.constants.frame_rate,
            "graphs": {g: sorted(v) for g, v in m.graphs.items()},
            "batching": self._batcher.describe() if self._batcher else None,
            "endpoints": ["/emotion"],
        }

    # -- the batch function (worker thread) ------------------------------------------------

    def _run_batch(self, items: list[np.ndarray]) -> list[post.ChunkOutput]:
        assert self._runner is not None, "the graph runs where the seam runs models"
        lengths = np.array([len(x) for x in items], np.int64)
        wav = np.zeros((len(items), int(lengths.max())), np.float32)
        for i, x in enumerate(items):
            wav[i, : len(x)] = x
        out = self._runner.run({"waveform": wav, "lengths": lengths})
        frames = out["frame_lengths"].astype(np.int64)
        return [
            post.ChunkOutput(logits=out["logits"][i], embedding=out["embedding"][i],
                             frame_logits=out["frame_logits"][i, : int(frames[i])])
            for i in range(len(items))
        ]

    # -- a request ------------------------------------------------------------------------

    async def analyse(self, data: bytes, options: EmotionOptions) -> EmotionResult:
        t0 = time.perf_counter()
        s, c = self.settings, self.constants
        with self._queue().expecting():  # until its chunks are submitted, or it fails
            audio = await self.ctx.cpu.run(functools.partial(
                decode_audio, data, target_rate=c.sample_rate,
                max_seconds=min(s.emotion_max_seconds, s.max_audio_seconds), on_long="reject",
                max_bytes=s.max_upload_bytes, minimum=self.minimum,
            ))
        timings = {"decode": _ms(t0)}
        result = await self.analyse_samples(audio.samples, options, timings)
        timings["total"] = _ms(t0)
        return result

    async def analyse_samples(self, samples: np.ndarray, options: EmotionOptions,
                              timings: dict[str, float] | None = None) -> EmotionResult:
        """Mono float32 samples at the pack's rate -> emotions (the decoded path's core)."""
        timings = {} if timings is None else timings
        c = self.constants
        self.minimum.check(len(samples), c.sample_rate)
        t = time.perf_counter()
        span, spans = await self.ctx.cpu.run(self._plan, samples, options)
        clip = samples[span.start : span.end]
        timings["trim"] = _ms(t)
        t = time.perf_counter()
        batcher, deadline = self._queue(), request_deadline()
        chunks = list(await asyncio.gather(*(
            batcher.submit(clip[sp.start : sp.end], length=sp.length, deadline=deadline)
            for sp in spans)))
        timings["inference"] = _ms(t)
        t = time.perf_counter()
        probs, embedding, frames = await self.ctx.cpu.run(self._postprocess, chunks, spans,
                                                          span, options)
        timings["postprocess"] = _ms(t)
        for stage, ms in timings.items():
            self.ctx.metrics.stage_seconds.labels("emotion2vec", stage).observe(ms / 1000.0)
        return EmotionResult(
            labels=c.labels, probabilities=probs,
            embedding=embedding if options.return_embedding else None,
            duration_s=len(samples) / c.sample_rate, analysed=span, chunks=len(spans),
            frames=frames, timings_ms=timings,
        )

    def _plan(self, samples: np.ndarray, options: EmotionOptions
              ) -> tuple[post.Span, list[post.Span]]:
        """The analysed span (trimmed or whole) and its chunks (CPU work: in the pool)."""
        c = self.constants
        span = (post.trim_silence(samples, c.sample_rate, c.min_samples)
                if options.trim_silence else post.Span(0, len(samples)))
        chunk = round(self.settings.emotion_chunk_seconds * c.sample_rate)
        return span, post.chunk_spans(span.length, chunk)

    def _postprocess(self, chunks: list[post.ChunkOutput], spans: list[post.Span],
                     analysed: post.Span, options: EmotionOptions
                     ) -> tuple[np.ndarray, np.ndarray, FrameScores | None]:
        """Merged scores and embedding, and the frame timeline if asked (in the pool:
        it grows with the audio)."""
        probs, embedding = post.merge_utterance(chunks, self.head)
        frames = (self._frames(chunks, spans, analysed)
                  if options.granularity is Granularity.FRAME else None)
        return probs, embedding, frames

    def _queue(self) -> BatchQueue[np.ndarray, post.ChunkOutput]:
        assert self._batcher is not None, "pipeline not started"
        return self._batcher

    def _frames(self, chunks: list[post.ChunkOutput], spans: list[post.Span],
                analysed: post.Span) -> FrameScores:
        c = self.constants
        times, probs = post.frame_timeline(chunks, spans, analysed.start, c.sample_rate,
                                           c.hop_samples)
        segments = post.segments(times, probs, analysed.start / c.sample_rate,
                                 analysed.end / c.sample_rate, c.frame_rate)
        return FrameScores(times_s=times, probabilities=probs, segments=segments)
