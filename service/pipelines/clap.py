"""LAION CLAP zero-shot classification and embeddings on ONNX Runtime.

Design note. A request is decoded to 48 kHz mono, cut into 10 s windows (see
`service.audio.clap_features`), and each window's log-mel is one item for the audio batcher,
so the windows of one long clip and the clips of concurrent requests share forward
passes. Label prompts go through a second batcher for the text graph, behind an LRU cache
(with in-flight de-duplication) so a repeated label set costs no inference. The clip's
embedding is the normalised mean of its windows' embeddings; scores are cosine x the
checkpoint's `logit_scale` (exp of `logit_scale_a`, as ClapModel's logits_per_audio),
softmaxed over the labels. A fused pack (`constants.fusion`) takes one [4, frames, mels]
item per clip instead of windows.

Where the log-mel is computed (`clap_features`): on the host (numpy, in the CPU pool), or
inside the pack's `audio_waveform` graph, whose items are the padded 10 s windows
themselves (export/clap_logmel.py); the host then only decodes and pads. A fused pack's
clip longer than 10 s still brings its 4 maps from the host (they need the whole clip).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from service.audio import clap_features as cf
from service.audio.decode import MinimumAudio, decode_audio
from service.audio.logmel_cache import LogMelCache
from service.errors import InvalidInput, PackError
from service.pipelines.base import LoadContext
from service.pipelines.clap_text import (
    EmbeddingCache,
    PromptTokenizer,
    pad_batch,
)
from service.runtime.admission import request_deadline
from service.runtime.packs import MANIFEST, ModelPack
from service.runtime.sessions import GraphRunner, open_graph, resolve_provider
from service.seam import replicas
from service.seam.handoff import BatchQueue

T = TypeVar("T")

TEXT_CACHE_SIZE = 4096
"""Prompts whose embeddings are kept; at 512 floats each, 4096 are 8 MiB."""
WAVEFORM_GRAPH = "audio_waveform"
"""The pack's audio graph with the log-mel inside (`waveform` [B, samples] in)."""


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    similarity: float
    """Raw cosine similarity between the audio and the label's prompt."""


@dataclass(frozen=True)
class WindowScores:
    index: int
    start_s: float
    end_s: float
    silent: bool
    used: bool
    labels: list[LabelScore]


@dataclass(frozen=True)
class AudioItem:
    """One audio-graph item: host log-mel [1, frames, mels] (unfused) or [4, frames, mels]
    (fused) in `features`, or (graph features) the padded 10 s window in `waveform`."""

    features: np.ndarray | None = None
    is_longer: bool = False
    """Fused graphs only: the item is a long clip's shrunk mel plus 3 crops."""
    waveform: np.ndarray | None = None
    """float32 [max_length_samples]: the log-mel is computed inside the graph."""


@dataclass(frozen=True)
class PreparedAudio:
    """An upload after the CPU stages: windows and their log-mel features."""

    spans: list[cf.WindowSpan]
    used: list[cf.WindowSpan]
    items: list[AudioItem]
    duration_s: float
    truncated: bool = False
    original_duration_s: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioEmbedding:
    embedding: np.ndarray
    """L2-normalised mean of the used windows' embeddings, float32 [D]."""
    window_embeddings: np.ndarray
    """float32 [windows_used, D], each L2-normalised."""
    spans: list[cf.WindowSpan]
    used: list[cf.WindowSpan]
    duration_s: float
    truncated: bool
    original_duration_s: float | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def windows_used(self) -> int:
        return len(self.used)


@dataclass(frozen=True)
class ClassifyResult:
    labels: list[LabelScore]
    """Sorted by probability, highest first (cut to top_k)."""
    audio: AudioEmbedding
    prompt_template: str
    per_window: list[WindowScores] | None
    timings_ms: dict[str, float]


def choose_features(pack: ModelPack, ctx: LoadContext) -> str:
    """`graph` or `host` for `clap_features`: auto is graph on CUDA, host on CPU (where
    numpy's FFT beats the graph's float64 DFT: bench/bench_clap_features.py). A pack
    without the waveform graph (exported before it existed) serves host features."""
    wanted = ctx.settings.clap_features
    has_graph = ctx.precision in pack.manifest.graphs.get(WAVEFORM_GRAPH, {})
    if wanted == "graph" and not has_graph:
        raise PackError(f"{pack.root / MANIFEST}: AUDIOSERVE_CLAP_FEATURES=graph, but the pack "
                        f"has no {WAVEFORM_GRAPH} graph at {ctx.precision}; re-export it with "
                        "`python -m export clap` (and `python -m quant` for fp16/int8)")
    if wanted != "auto":
        return wanted
    cuda = resolve_provider(ctx.runtime.provider, log_fallback=False) == "cuda"
    return "graph" if cuda and has_graph else "host"


def _required(value: np.ndarray | None) -> np.ndarray:
    assert value is not None, "audio item prepared for the other features mode"
    return value


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class ClapPipeline:
    """Owns the two ONNX sessions, their batchers and the text cache (see the note above)."""

    name = "clap"
    concurrent_batches = True

    def __init__(self, pack: ModelPack, ctx: LoadContext, audio: GraphRunner | None,
                 text: GraphRunner | None, tokenizer: PromptTokenizer, *,
                 features: str = "host") -> None:
        self.pack = pack
        self.ctx = ctx
        self.settings = ctx.settings
        self.precision = ctx.precision
        self.mel = cf.MelConfig.from_constants(pack.constants)
        self.minimum = MinimumAudio("clap", self.mel.n_fft, "one window of its log-mel")
        self.logit_scale = float(pack.constants["logit_scale"])
        self.default_template = str(pack.constants["prompt_template"])
        self._audio = audio
        self._text = text
        self.tokenizer = tokenizer
        self.provider = audio.provider if audio is not None else ctx.runtime.provider
        self.cache = EmbeddingCache(TEXT_CACHE_SIZE)
        self._inflight: dict[str, tuple[asyncio.Task[np.ndarray], replicas.RequestReplicas]] = {}
        self.fused = self.mel.fusion
        self.features = features
        """`graph`: items are waveforms, the log-mel runs in the audio graph; `host`."""
        self._audio_batcher: BatchQueue[AudioItem, np.ndarray] | None = None
        self._text_batcher: BatchQueue[np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, pack: ModelPack, ctx: LoadContext) -> ClapPipeline:
        """Open both sessions (where the seam runs models) and the tokenizer (slow,
        synchronous: called in a thread)."""
        features = choose_features(pack, ctx)
        audio = text = None
        if ctx.seam.runs_models:
            graph = WAVEFORM_GRAPH if features == "graph" else "audio"
            audio = open_graph(pack.graph(graph, ctx.precision)[0],
                               replace(ctx.runtime, fixed_shapes=True))  # fixed item shapes
            text = open_graph(pack.graph("text", ctx.precision)[0], ctx.runtime)
        c = pack.constants
        try:
            tokenizer = PromptTokenizer(pack.file("tokenizer"),
                                        max_length=int(c["text_max_length"]),
                                        pad_id=int(c["pad_token_id"]))
            return cls(pack, ctx, audio, text, tokenizer, features=features)
        except KeyError as exc:
            raise PackError(f"{pack.root / MANIFEST}: constants lack {exc}; re-export the "
                            "pack with `python -m export clap`") from exc

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        config = self.ctx.batch
        metrics = self.ctx.metrics
        seam = self.ctx.seam
        # uploads announce themselves while they decode (see embed_audio); text is ready
        self._audio_batcher = seam.queue("clap", "clap_audio", self._run_audio,
                                         replace(config, announced_arrivals=True),
                                         metrics.observer("clap_audio"))
        self._text_batcher = seam.queue("clap", "clap_text", self._run_text, config,
                                        metrics.observer("clap_text"))
        self._audio_batcher.start()
        self._text_batcher.start()
        if self.settings.warmup:
            silence = np.zeros(self.mel.max_length_samples, np.float32)
            await self._audio_batcher.calibrate(self.prepare_samples(silence).items[0])
            ids = self.tokenizer.encode(["This is a sound of warm-up."])[0]
            await self._text_batcher.calibrate(ids, length=len(ids))

    async def stop(self) -> None:
        for batcher in (self._audio_batcher, self._text_batcher):
            if batcher is not None:
                await batcher.close()

    @property
    def healthy(self) -> bool:
        return all(b is not None and b.running for b in (self._audio_batcher, self._text_batcher))

    def info(self) -> dict[str, Any]:
        m = self.pack.manifest
        return {
            "id": "clap", "object": "model", "kind": "clap", "demo": m.demo,
            "source": m.source, "precision": self.precision, "provider": self.provider,
            "features": self.features,
            "embed_dim": int(self.pack.constants["embed_dim"]),
            "batching": {name: b.describe() for name, b in
                         (("audio", self._audio_batcher), ("text", self._text_batcher)) if b},
            "graphs": {g: sorted(v) for g, v in m.graphs.items()},
            "endpoints": ["/classify", "/embed/audio", "/embed/text"],
        }

    # -- batch functions (worker threads) -------------------------------------------------

    def _run_audio(self, items: list[AudioItem]) -> list[np.ndarray]:
        assert self._audio is not None, "the audio graph runs where the seam runs models"
        out = self._audio.run(self._audio_feeds(items))["audio_embeds"]
        return list(out.astype(np.float32, copy=False))

    def _audio_feeds(self, items: list[AudioItem]) -> dict[str, np.ndarray]:
        """The audio graph's inputs. A fused waveform graph takes both kinds of item in one
        batch: each row reads its window (`use_waveform`) or the host's 4 maps; the other
        input's row is zeros."""
        is_longer = np.array([[item.is_longer] for item in items], dtype=bool)
        if self.features == "host":
            feeds = {"input_features": np.stack([_required(i.features) for i in items])}
            if self.fused:
                feeds["is_longer"] = is_longer
            return feeds
        if not self.fused:
            return {"waveform": np.stack([_required(i.waveform) for i in items])}
        m = self.mel
        window = np.zeros(m.max_length_samples, np.float32)
        maps = np.zeros((4, m.frames, m.n_mels), np.float32)
        return {
            "waveform": np.stack([window if i.waveform is None else i.waveform
                                  for i in items]),
            "long_features": np.stack([maps if i.features is None else i.features
                                       for i in items]),
            "is_longer": is_longer,
            "use_waveform": np.array([[i.waveform is not None] for i in items], dtype=bool),
        }

    def _run_text(self, items: list[np.ndarray]) -> list[np.ndarray]:
        assert self._text is not None, "the text graph runs where the seam runs models"
        ids, mask = pad_batch(items, self.tokenizer.pad_id)
        out = self._text.run({"input_ids": ids, "attention_mask": mask})["text_embeds"]
        return list(out.astype(np.float32, copy=False))

    # -- building blocks ----------------------------------------------------------------

    def _observe(self, stage: str, ms: float) -> None:
        self.ctx.metrics.stage_seconds.labels("clap", stage).observe(ms / 1000.0)

    def prepare(self, data: bytes) -> PreparedAudio:
        """Decode, window and log-mel an upload: all the CPU work, in one worker-thread hop
        (two hops would queue every request's second step behind everyone's first)."""
        t0 = time.perf_counter()
        s = self.settings
        audio = decode_audio(
            data, target_rate=self.mel.sample_rate,
            max_seconds=min(s.classify_max_seconds, s.max_audio_seconds),
            on_long=s.classify_long_audio, max_bytes=s.max_upload_bytes, minimum=self.minimum,
        )
        decode_ms = _ms(t0)
        prepared = self.prepare_samples(audio.samples)
        return replace(prepared, truncated=audio.truncated,
                       original_duration_s=audio.original_duration_s,
                       timings_ms={"decode": decode_ms, **prepared.timings_ms})

    def prepare_samples(self, samples: np.ndarray, cache: LogMelCache | None = None,
                        start: int | None = None) -> PreparedAudio:
        """Window mono float32 samples at the pack's rate and, with host features,
        log-mel them. The stage is timed as `features`, or as `windows` when the log-mel
        runs in the graph (its time is then part of `audio_embed`). `cache` and `start`:
        a live window's (see embed_window)."""
        t0 = time.perf_counter()
        if self.fused:  # one item for the whole clip (see service.audio.clap_features)
            spans = used = [cf.whole_clip_span(samples, self.mel)]
            items = [self._fused_item(samples)]
        else:
            spans = cf.plan_windows(samples, self.mel)
            used = cf.select_windows(spans)
            items = [self._window_item(samples, span, cache, start) for span in used]
        stage = "windows" if self.features == "graph" else "features"
        return PreparedAudio(spans=spans, used=used, items=items,
                             duration_s=samples.shape[0] / self.mel.sample_rate,
                             timings_ms={stage: _ms(t0)})

    def _window_item(self, samples: np.ndarray, span: cf.WindowSpan,
                     cache: LogMelCache | None = None, start: int | None = None) -> AudioItem:
        if self.features == "graph":
            return AudioItem(waveform=cf.pad_short(samples[span.start:span.end], self.mel))
        if cache is not None and (span.start, span.end) == (0, samples.shape[0]):
            return AudioItem(features=cache.window_features(samples, start))
        return AudioItem(features=cf.window_features(samples, span, self.mel))

    def _fused_item(self, samples: np.ndarray) -> AudioItem:
        if self.features == "graph" and samples.shape[0] <= self.mel.max_length_samples:
            return AudioItem(waveform=cf.pad_short(samples, self.mel))
        features, is_longer = cf.fusion_features(samples, self.mel)
        return AudioItem(features=features, is_longer=is_longer)

    async def embed_audio(self, data: bytes) -> AudioEmbedding:
        """Decode, window, log-mel and embed an upload; timings cover each stage."""
        return await self._prepare_and_embed(self.prepare, data)

    async def embed_samples(self, samples: np.ndarray) -> AudioEmbedding:
        """Embed already decoded samples (mono float32 at the pack's sample rate)."""
        return await self._prepare_and_embed(self.prepare_samples, samples)

    def window_cache(self) -> LogMelCache | None:
        """A live stream's log-mel frame cache for embed_window; None where the host
        computes no window log-mel (graph features, or a fused pack's whole-clip item)."""
        return LogMelCache(self.mel) if self.features == "host" and not self.fused else None

    async def embed_window(self, samples: np.ndarray, start: int | None,
                           cache: LogMelCache | None) -> AudioEmbedding:
        """embed_samples of one live window, its log-mel reusing the frames it shares with
        the stream's previous window (`start`: its offset at the pack's rate, None where
        its samples were resampled; service.audio.logmel_cache). The same answer, to the
        bit, for less CPU. `cache` None: as embed_samples."""
        return await self._prepare_and_embed(
            functools.partial(self.prepare_samples, cache=cache, start=start), samples)

    async def _prepare_and_embed(self, prepare: Callable[[T], PreparedAudio], source: T
                                 ) -> AudioEmbedding:
        """The CPU work on the pool, announced to the audio batcher until its windows are
        submitted (embed_prepared submits before its first await)."""
        with self._audio_queue().expecting():
            prepared = await self.ctx.cpu.run(prepare, source)
        return await self.embed_prepared(prepared)

    def _audio_queue(self) -> BatchQueue[AudioItem, np.ndarray]:
        assert self._audio_batcher is not None, "pipeline not started"
        return self._audio_batcher

    async def embed_prepared(self, prepared: PreparedAudio) -> AudioEmbedding:
        """Every used window through the audio batcher, then their normalised mean."""
        timings = dict(prepared.timings_ms)
        t0 = time.perf_counter()
        batcher, deadline = self._audio_queue(), request_deadline()
        rows = await asyncio.gather(
            *(batcher.submit(item, deadline=deadline) for item in prepared.items)
        )
        timings["audio_embed"] = _ms(t0)
        windows = np.stack(rows).astype(np.float32)
        embedding = _normalise(windows.astype(np.float64).mean(axis=0)).astype(np.float32)
        for stage, ms in timings.items():
            self._observe(stage, ms)
        return AudioEmbedding(
            embedding=embedding, window_embeddings=windows, spans=prepared.spans,
            used=prepared.used, duration_s=prepared.duration_s, truncated=prepared.truncated,
            original_duration_s=prepared.original_duration_s, timings_ms=timings,
        )

    async def embed_text(self, texts: list[str]) -> np.ndarray:
        """float32 [N, D] L2-normalised embeddings, cached by exact text; only prompts not
        in the cache are tokenised (in the CPU pool, all in one go)."""
        cache_events = self.ctx.metrics.cache_events
        results: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            hit = self.cache.get(text)
            if hit is not None:
                results[text] = hit
                replicas.note(*self.cache.origin(text))
            else:
                missing.append(text)
        cache_events.labels("clap_text", "hit").inc(len(texts) - len(missing))
        cache_events.labels("clap_text", "miss").inc(len(missing))
        if missing:
            ids = await self.ctx.cpu.run(self.tokenizer.encode, missing)
            computed = await asyncio.gather(*(self._embed_one_text(t, i)
                                              for t, i in zip(missing, ids, strict=True)))
            results.update(zip(missing, computed, strict=True))
        return np.stack([results[t] for t in texts])

    async def count_tokens(self, texts: list[str]) -> int:
        """Prompt tokens of `texts` as the text graph sees them (usage of /embed/text)."""
        ids = await self.ctx.cpu.run(self.tokenizer.encode, texts)
        return sum(len(row) for row in ids)

    async def _embed_one_text(self, text: str, ids: np.ndarray) -> np.ndarray:
        """One prompt through the text batcher. The work runs as its own task, shared by
        every concurrent asker and unaffected by any one of them going away."""
        shared = self._inflight.get(text)
        if shared is None:
            # a fresh context: the shared work must not inherit one asker's deadline; it
            # notes its replica in a record of its own, which every asker adopts
            context, record = replicas.shared_context()
            task = asyncio.get_running_loop().create_task(self._compute_text(text, ids),
                                                          context=context)
            shared = self._inflight[text] = (task, record)
            task.add_done_callback(functools.partial(self._forget, text))
        try:
            return await asyncio.shield(shared[0])
        finally:
            replicas.adopt(shared[1])

    async def _compute_text(self, text: str, ids: np.ndarray) -> np.ndarray:
        assert self._text_batcher is not None, "pipeline not started"
        embedding = await self._text_batcher.submit(ids, length=len(ids))
        self.cache.put(text, embedding, origin=replicas.noted())
        cached = self.cache.get(text)
        return embedding if cached is None else cached

    def _forget(self, key: str, done: asyncio.Task[np.ndarray]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every asker may have gone away

    # -- classification -------------------------------------------------------------------

    def score(self, audio_embedding: np.ndarray, text_embeddings: np.ndarray,
              labels: list[str], top_k: int) -> list[LabelScore]:
        similarity = text_embeddings.astype(np.float64) @ audio_embedding.astype(np.float64)
        probs = softmax(similarity * self.logit_scale)
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [LabelScore(labels[i], float(probs[i]), float(similarity[i])) for i in order]

    async def classify(self, data: bytes, labels: list[str], *, prompt_template: str | None = None,
                       top_k: int | None = None, per_window: bool = False) -> ClassifyResult:
        """Labels and template as the route's params validated them (distinct, within
        the limits; one plain `{label}`: see validate_labels, validate_template)."""
        template = prompt_template or self.default_template
        if per_window and self.fused:
            raise InvalidInput("per_window needs an unfused CLAP pack: a fused one embeds "
                               "the whole clip at once")
        k = min(top_k or len(labels), len(labels))
        prompts = [template.format(label=label) for label in labels]

        async def text_side() -> tuple[np.ndarray, float]:
            t = time.perf_counter()
            return await self.embed_text(prompts), _ms(t)

        audio, (texts, text_ms) = await asyncio.gather(self.embed_audio(data), text_side())
        timings = dict(audio.timings_ms)
        timings["text_embed"] = text_ms
        t0 = time.perf_counter()
        ranked = self.score(audio.embedding, texts, labels, k)
        timeline = self._timeline(audio, texts, labels, k) if per_window else None
        timings["scores"] = _ms(t0)
        for stage in ("text_embed", "scores"):
            self._observe(stage, timings[stage])
        return ClassifyResult(labels=ranked, audio=audio, prompt_template=template,
                              per_window=timeline, timings_ms=timings)

    def _timeline(self, audio: AudioEmbedding, texts: np.ndarray, labels: list[str],
                  k: int) -> list[WindowScores]:
        by_index = {span.index: row for span, row in zip(audio.used, audio.window_embeddings,
                                                         strict=True)}
        timeline = []
        for span in audio.spans:
            row = by_index.get(span.index)
            scores = [] if row is None else self.score(row, texts, labels, k)
            timeline.append(WindowScores(index=span.index, start_s=span.start_s,
                                         end_s=span.end_s, silent=span.silent,
                                         used=row is not None, labels=scores))
        return timeline
