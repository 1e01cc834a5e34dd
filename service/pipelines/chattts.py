"""ChatTTS text-to-speech: prompt -> continuous-batching GPT -> Decoder + Vocos -> audio.

Design note. Preprocessing (normalise, tokenise, speaker embedding) runs in a thread; the
GPT runs in the engine's own thread (`service.tts.engine`), batched per step with every
other request. A finished sequence's hidden states go through `DynamicBatcher` to the
decoder and vocos graphs, grouped by token count: only equal-length sequences share a
forward, because zero-padding a shorter one would change its last ~40 frames (the
convolutions see the padding), and a request's audio must not depend on who else
finished at the same time. With `refine_text` the text first goes through the refine
pass (same engine, `head_text`), as upstream does, and the refined text is spoken.

Post-processing: upstream's `infer()` deletes every sample with |x| <= 1e-5 anywhere in
the wave, which shortens silences unpredictably and breaks timing; a service keeps them.
The wave is attenuated to a 0.95 peak only when it would clip (quiet output is not
amplified), then resampled with soxr to the requested rate and encoded.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from batcher.steps import Admission, FinishReason, StepConfig
from service.audio.decode import resample
from service.audio.encode import encode_audio
from service.errors import InvalidInput, PayloadTooLarge
from service.pipelines.base import LoadContext
from service.runtime.admission import deadline_scope
from service.runtime.packs import ModelPack
from service.seam.handoff import BatchQueue
from service.settings import Settings
from service.tts import speaker as speakers
from service.tts import text as texts
from service.tts.chunking import Split, split_pieces
from service.tts.engine import EngineConfig, KVCacheKind
from service.tts.jobs import CodeStep, GenerationJob, GenerationResult, PassKind
from service.tts.model import TTSConstants, TTSGraphs
from service.tts.streaming import PEAK, receptive_field_tokens, stitch_with_spans
from service.tts.stretch import time_stretch
from service.tts.voice_spec import VoiceLimits
from service.tts.voices import StoreLimits, VoiceStore

T = TypeVar("T")


MAX_SAMPLING_SEED = 2**53 - 1
"""The largest seed a JSON client may send intact: JavaScript (Swagger UI, the web page)
holds numbers as doubles, so a larger one arrives rounded to another value."""



def token_bounds_problem(min_new: int | None, max_new: int | None) -> str | None:
    """What is wrong with a piece's token bounds, if anything: `min_new_tokens` (ChatTTS's
    `min_new_token`: EOS is masked until then) cannot be above `max_new_tokens`."""
    if min_new is not None and max_new is not None and min_new > max_new:
        return f"min_new_tokens ({min_new}) is above max_new_tokens ({max_new})"
    return None


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    seed: int | None = None
    spk_emb: str | None = None
    sampling_seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    refine_text: bool = False
    format: str = "wav"
    sample_rate: int = 24000
    voice: str | None = None
    """A voice name, a mix `a(2)+b(1)` or an `spk_emb` string (see service/tts/voices.py)."""
    speed: float = 1.0
    """0.25-4.0, by time-stretching each piece (service/tts/stretch.py)."""
    greedy: bool = False
    """Argmax sampling (tests and parity checks; not exposed over HTTP)."""
    split: Split = "long"
    """How the text is cut into pieces: `long` fills pieces up to `tts_piece_max_chars`
    (`split_long_text`); `sentence` / `clause` make every sentence / clause a piece
    (`split_at_sentences` / `split_at_clauses`), as `WS /v1/audio/speech/stream` cuts text
    that arrives in fragments."""
    deadline: float | None = None
    """`time.monotonic()` by which the request must have started (its first sequence got a
    decoding slot), else 504; default: `request_timeout_s` after `prepare` begins."""


@dataclass(frozen=True)
class SpeechResult:
    audio: bytes
    samples: np.ndarray
    """float32 mono at `sample_rate`, after post-processing."""
    sample_rate: int
    duration_s: float
    tokens: int
    codes: np.ndarray
    finish_reason: str
    sampling_seed: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    pieces: int = 1
    truncated_at_s: float | None = None
    """Set when the audio was cut at AUDIOSERVE_TTS_MAX_OUTPUT_S (said in a header)."""
    spans: tuple[tuple[int, int], ...] = ()
    """[start, end) of each piece in the joined audio, in samples at the pack's rate (not
    `sample_rate`): the same numbers as a stream's `SpeechStream.spans`."""


@dataclass(frozen=True)
class PreparedSpeech:
    """A request made ready for the engine: one audio-code job per piece of the text."""

    jobs: tuple[GenerationJob, ...]
    sampling_seed: int
    timings_ms: dict[str, float]


def peak_limit(wave: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """Scale down to `peak` only if the wave would exceed it; never clip, never amplify."""
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    if top <= peak or not np.isfinite(top):
        return wave.astype(np.float32, copy=False)
    return (wave * (peak / top)).astype(np.float32)


def cut_to_budget(counts: list[int], budget: int) -> tuple[list[int], bool]:
    """Tokens kept of each piece, in order, when the request may produce `budget` in all;
    and whether anything was cut. Exact while pieces still run: piece k can be stopped
    once the tokens of pieces 0..k reach the budget, since the earlier ones only grow."""
    kept, room = [], budget
    for count in counts:
        kept.append(min(count, room))
        room -= kept[-1]
    return kept, kept != counts


def _max_active(settings: Settings) -> int:
    return 1 if settings.tts_scheduling == "sequential" else settings.tts_max_active


def _max_waiting(settings: Settings) -> int:
    return settings.tts_max_waiting or settings.max_queue


def max_sequences(settings: Settings) -> int:
    """The most sequences the engine holds at once (decoding and waiting): more pieces
    than this in one request can never be admitted, however long it retries."""
    return _max_active(settings) + _max_waiting(settings)


def engine_config(settings: Settings, max_seq_len: int) -> EngineConfig:
    mode = settings.tts_scheduling
    admission = Admission.STATIC if mode == "static" else Admission.CONTINUOUS
    max_active = _max_active(settings)
    paused = settings.tts_max_paused
    return EngineConfig(
        step=StepConfig(max_active=max_active, max_seq_len=max_seq_len, admission=admission,
                        max_prefills_per_step=settings.tts_max_prefills,
                        max_paused=4 * settings.tts_max_active if paused is None else paused),
        max_waiting=_max_waiting(settings),
        static_wait_ms=settings.tts_static_wait_ms,
        kv_cache=KVCacheKind(settings.tts_kv_cache),
    )


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """`asyncio.gather`, but the first failure cancels the rest (a failed piece must not
    leave its siblings generating for nobody)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class ChatTTSPipeline:
    name = "chattts"
    concurrent_batches = False
    """The decoding steps run one after another (the step scheduler is the batching)."""

    def __init__(self, pack: ModelPack, ctx: LoadContext, graphs: TTSGraphs | None,
                 config: EngineConfig | None = None) -> None:
        self.pack = pack
        self.ctx = ctx
        self.settings = ctx.settings
        self.precision = ctx.precision
        self.graphs = graphs
        self.c = graphs.c if graphs is not None else TTSConstants.from_manifest(pack.constants)
        self.prompts = texts.PromptBuilder.from_pack(pack)
        self.spk_stat = speakers.load_spk_stat(pack)
        self.engine = ctx.seam.engine(
            "chattts", graphs,
            config or engine_config(ctx.settings, self.c.max_position_embeddings),
            name="chattts_gpt", observer=ctx.metrics.observer("chattts_gpt"),
        )
        self._decoder: BatchQueue[np.ndarray, np.ndarray] | None = None
        s = self.settings
        self.voices = VoiceStore(
            s.voices_dir, self.spk_stat,
            VoiceLimits(s.tts_voice_max_chars, s.tts_voice_max_terms, s.tts_voice_max_weight),
            StoreLimits(s.tts_max_saved_voices, s.tts_saved_voices_max_bytes))
        extra = getattr(pack.manifest, "model_extra", None) or {}
        radius = receptive_field_tokens(extra.get("config", {}))
        self.stream_context = self.settings.tts_stream_context_tokens or radius
        self.stream_lookahead = (radius if self.settings.tts_stream_lookahead_tokens is None
                                 else self.settings.tts_stream_lookahead_tokens)
        self.crossfade = int(self.c.sample_rate * self.settings.tts_crossfade_ms / 1000)
        self._encode_slots = asyncio.Semaphore(self.settings.tts_encode_slots)

    @classmethod
    def load(cls, pack: ModelPack, ctx: LoadContext) -> ChatTTSPipeline:
        """Open every session where the seam runs models (slow, synchronous: called in a
        thread)."""
        graphs = (TTSGraphs.open(pack, ctx.precision, ctx.runtime) if ctx.seam.runs_models
                  else None)
        return cls(pack, ctx, graphs)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.engine.start()
        # a whole-file request announces its decode while its tokens are generated
        self._decoder = self.ctx.seam.queue(
            "chattts", "chattts_decode", self._decode_batch,
            # not gated: the stream's playback waits on it, and the step loop beside it
            # is not gated either (the gate orders the analysis models' batches)
            replace(self.ctx.batch, timeout_s=None, announced_arrivals=True, core_slots=0),
            self.ctx.metrics.observer("chattts_decode"),
        )
        self._decoder.start()
        if self.settings.warmup:
            await self.synthesize(SpeechRequest(text="warm up", seed=0, max_new_tokens=2))

    async def stop(self) -> None:
        await self.engine.stop()
        if self._decoder is not None:
            await self._decoder.close()

    @property
    def healthy(self) -> bool:
        return self.engine.healthy and self._decoder is not None and self._decoder.running

    def info(self) -> dict[str, Any]:
        m = self.pack.manifest
        cfg = self.engine.config.step
        return {
            "id": "chattts", "object": "model", "kind": "chattts", "demo": m.demo,
            "source": m.source, "precision": self.precision,
            "provider": self.graphs.provider if self.graphs else self.ctx.runtime.provider,
            "sample_rate": self.c.sample_rate, "max_active": cfg.max_active,
            "scheduling": cfg.admission.value if cfg.max_active > 1 else "sequential",
            "graphs": {g: sorted(v) for g, v in m.graphs.items()},
            "endpoints": ["/tts", "/v1/audio/speech", "/v1/voices"],
            "stream": {"chunk_tokens": self.settings.tts_stream_chunk_tokens,
                       "context_tokens": self.stream_context,
                       "lookahead_tokens": self.stream_lookahead},
        }

    # -- output bounds (docs/tts-limits.md) ---------------------------------------------

    @property
    def token_s(self) -> float:
        """Seconds of audio per token at speed 1 (21.3 ms)."""
        return self.c.samples_per_token / self.c.sample_rate

    def token_budget(self, req: SpeechRequest) -> int:
        """Tokens the whole request may generate: AUDIOSERVE_TTS_MAX_OUTPUT_S of audio
        after `speed` (pieces stop, in order, once it is reached)."""
        return max(1, int(self.settings.tts_max_output_s * req.speed / self.token_s))

    def check_output(self, req: SpeechRequest) -> None:
        """413 up front when one piece's `max_new_tokens` alone is over the output cap."""
        if req.max_new_tokens is None:
            return
        seconds = req.max_new_tokens * self.token_s / req.speed
        limit = self.settings.tts_max_output_s
        if seconds > limit:
            raise PayloadTooLarge(
                f"max_new_tokens {req.max_new_tokens} at speed {req.speed:g} is up to "
                f"{seconds:.0f} s of audio; the limit is {limit:g} s per request "
                f"(AUDIOSERVE_TTS_MAX_OUTPUT_S): at most "
                f"{self.token_budget(req)} tokens at this speed")

    # -- the request's way ------------------------------------------------------------

    async def prepare(self, req: SpeechRequest) -> PreparedSpeech:
        """Speaker, seeds, pieces of the text (long text: sentence/clause cuts), optional
        refine pass, prompt ids: one code job per piece, all run in the same batch.

        The request's deadline covers its start only: the CPU work before its first
        engine job (which then must get a slot by the deadline: `start_by`), never the
        generation or anything after it."""
        self.check_output(req)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        deadline = req.deadline or time.monotonic() + self.settings.request_timeout_s
        with deadline_scope(deadline):
            spk = await self.ctx.cpu.run(self._speaker, req)
            pieces = await self.ctx.cpu.run(self._pieces, req.text, req.split)
        sampling_seed = self.sampling_seed(req)
        if req.refine_text:
            t1 = time.perf_counter()
            pieces = list(await gather_or_cancel(*(
                self._refine(p, (sampling_seed + i) % 2**63, req.greedy,
                             start_by=deadline if i == 0 else None)
                for i, p in enumerate(pieces))))
            timings["refine"] = _ms(t1)
        jobs = []
        for i, piece in enumerate(pieces):
            prompt = await self.ctx.cpu.run(functools.partial(
                self.prompts.code_prompt_ids, piece, spk is not None, normalize=False
            ))
            first = i == 0 and not req.refine_text
            jobs.append(self._code_job(req, prompt, spk, (sampling_seed + i) % 2**63,
                                       start_by=deadline if first else None))
        timings["prepare"] = _ms(t0) - timings.get("refine", 0.0)
        return PreparedSpeech(tuple(jobs), sampling_seed, timings)

    def _pieces(self, text: str, split: Split = "long") -> list[str]:
        pieces = [self.prompts.normalize(p)
                  for p in split_pieces(text, self.settings.tts_piece_max_chars, split)]
        pieces = [p for p in pieces if p.strip()]
        if not pieces:
            raise InvalidInput("the text has nothing the model can speak after normalisation")
        if len(pieces) > (most := max_sequences(self.settings)):
            raise PayloadTooLarge(
                f"the text splits into {len(pieces)} pieces ({split} split); one request may "
                f"hold at most {most} (AUDIOSERVE_TTS_MAX_ACTIVE + AUDIOSERVE_TTS_MAX_WAITING): "
                "send less text per request, or split it coarser")
        return pieces

    async def synthesize(self, req: SpeechRequest) -> SpeechResult:
        t0 = time.perf_counter()
        prepared = await self.prepare(req)
        timings = dict(prepared.timings_ms)
        self.engine.check_capacity(len(prepared.jobs))
        assert self._decoder is not None, "pipeline not started"
        budget = self.token_budget(req)
        with self._decoder.expecting():
            if sum(j.max_new_tokens for j in prepared.jobs) <= budget:
                results = await gather_or_cancel(*(self.engine.generate(j)
                                                   for j in prepared.jobs))
            else:  # the cap may bind: watch the tokens and stop the pieces at it
                results = await self._generate_capped(prepared.jobs, budget)
        timings["queue"] = max(r.queued_s for r in results) * 1000.0
        timings["generate"] = max(r.queued_s + r.generate_s for r in results) * 1000.0
        timings["generate"] -= timings["queue"]
        kept, cut = cut_to_budget([int(r.tokens.shape[0]) for r in results], budget)
        cut = cut or any(r.finish is FinishReason.ABORTED for r in results)
        results = [replace(r, tokens=r.tokens[:k], hidden=None if r.hidden is None
                           else r.hidden[:k]) for r, k in zip(results, kept, strict=True)
                   if k or r is results[0]]
        t2 = time.perf_counter()
        waves = await gather_or_cancel(*(self._waveform(r) for r in results))
        timings["decode"] = _ms(t2)
        t3 = time.perf_counter()
        async with self._encode_slots:  # big encodes leave the rest of the pool free
            samples, audio, spans = await self.ctx.cpu.run(self._postprocess, list(waves),
                                                           req)
        timings["encode"] = _ms(t3)
        limit_s = self.settings.tts_max_output_s
        truncated_at = limit_s if cut or len(samples) >= limit_s * req.sample_rate else None
        timings["total"] = _ms(t0)
        for stage in ("generate", "decode", "encode"):
            self.ctx.metrics.stage_seconds.labels("chattts", stage).observe(timings[stage] / 1e3)
        finish = ("max_output" if truncated_at is not None else
                  "max_tokens" if any(r.finish.value == "max_tokens" for r in results)
                  else results[-1].finish.value)
        return SpeechResult(
            audio=audio, samples=samples, sample_rate=req.sample_rate,
            duration_s=len(samples) / req.sample_rate,
            tokens=sum(int(r.tokens.shape[0]) for r in results),
            codes=np.concatenate([r.tokens for r in results]), finish_reason=finish,
            sampling_seed=prepared.sampling_seed, timings_ms=timings, pieces=len(results),
            truncated_at_s=truncated_at, spans=tuple(spans),
        )

    async def speaker(self, req: SpeechRequest) -> np.ndarray | None:
        """The request's speaker embedding (voice, spk_emb or seed), in the CPU pool."""
        return await self.ctx.cpu.run(self._speaker, req)

    async def piece_job(self, req: SpeechRequest, spk: np.ndarray | None, piece: str,
                        index: int, sampling_seed: int, start_by: float | None = None
                        ) -> GenerationJob | None:
        """The code job of one piece of text that arrived on its own (a sentence of a
        live utterance), made as `prepare` makes piece `index`'s; None when nothing of it
        is left to speak after normalisation (`prepare` drops such pieces too)."""
        text = await self.ctx.cpu.run(self.prompts.normalize, piece)
        if not text.strip():
            return None
        prompt = await self.ctx.cpu.run(functools.partial(
            self.prompts.code_prompt_ids, text, spk is not None, normalize=False))
        return self._code_job(req, prompt, spk, (sampling_seed + index) % 2**63, start_by)

    async def _generate_capped(self, jobs: tuple[GenerationJob, ...], budget: int
                               ) -> list[GenerationResult]:
        """Every piece's tokens, each piece stopped (its sequence aborted) once it and the
        pieces before it hold `budget` tokens (`cut_to_budget`'s rule): generation ends
        at the output cap instead of running every piece to its own end. A piece so
        stopped is returned with what it had, finish reason ABORTED."""
        counts = [0] * len(jobs)

        async def piece(k: int, job: GenerationJob) -> GenerationResult:
            tokens = self.engine.open_stream(job)
            steps: list[CodeStep] = []
            started = time.perf_counter()
            try:
                async for event in tokens:
                    if not isinstance(event, CodeStep):
                        return event
                    steps.append(event)
                    counts[k] += 1
                    if sum(counts[: k + 1]) >= budget:
                        break
            finally:
                tokens.close()
            return GenerationResult(
                request_id=job.request_id,
                tokens=np.stack([s.token for s in steps]) if steps
                else np.zeros((0, self.c.num_vq), np.int64),
                hidden=np.stack([s.hidden for s in steps]) if steps
                else np.zeros((0, self.c.hidden_size), np.float32),
                finish=FinishReason.ABORTED, queued_s=0.0,
                generate_s=time.perf_counter() - started)

        return await gather_or_cancel(*(piece(k, j) for k, j in enumerate(jobs)))

    def _speaker(self, req: SpeechRequest) -> np.ndarray | None:
        if req.voice is not None:
            return self.voices.resolve(req.voice)
        if req.spk_emb is not None:
            return self.voices.decode(req.spk_emb, "spk_emb")
        if req.seed is not None:
            return speakers.sample_speaker(self.spk_stat, req.seed)
        return None

    @staticmethod
    def sampling_seed(req: SpeechRequest) -> int:
        if req.sampling_seed is not None:
            return req.sampling_seed
        if req.seed is not None:
            return req.seed
        # Within what the routes accept, so the seed a reply reports can be sent back.
        return secrets.randbelow(MAX_SAMPLING_SEED + 1)

    def _code_job(self, req: SpeechRequest, prompt: np.ndarray, spk: np.ndarray | None,
                  seed: int, start_by: float | None = None) -> GenerationJob:
        defaults = self.c.code
        max_new = min(req.max_new_tokens or defaults.max_new_token, self.token_budget(req))
        room = self.c.max_position_embeddings - len(prompt)
        if max_new > room:
            raise InvalidInput(
                f"max_new_tokens {max_new} does not fit: the prompt takes {len(prompt)} of "
                f"the model's {self.c.max_position_embeddings} positions"
            )
        return GenerationJob(
            request_id=uuid.uuid4().hex, kind=PassKind.CODE, prompt_ids=prompt, spk_emb=spk,
            params=defaults.params(temperature=req.temperature, top_p=req.top_p,
                                   top_k=req.top_k, min_new_tokens=req.min_new_tokens,
                                   greedy=req.greedy),
            max_new_tokens=max_new, seed=seed, start_by=start_by,
        )

    async def _refine(self, text: str, seed: int, greedy: bool,
                      start_by: float | None = None) -> str:
        prompt = await self.ctx.cpu.run(
            functools.partial(self.prompts.refine_prompt_ids, text, normalize=False)
        )
        job = GenerationJob(
            request_id=uuid.uuid4().hex, kind=PassKind.TEXT, prompt_ids=prompt, spk_emb=None,
            params=self.c.refine.params(greedy=greedy),
            max_new_tokens=self.c.refine.max_new_token, seed=seed, start_by=start_by,
        )
        result = await self.engine.generate(job)
        refined = self.prompts.refined_text(result.tokens)
        return refined if refined.strip() else text

    async def _waveform(self, result: GenerationResult) -> np.ndarray:
        assert result.hidden is not None
        return await self.decode_hidden(result.hidden)

    async def decode_hidden(self, hidden: np.ndarray) -> np.ndarray:
        """Hidden states of N tokens -> 512 N - 256 samples, through the decode batcher."""
        assert self._decoder is not None
        if hidden.shape[0] == 0:
            return np.zeros(0, np.float32)
        return await self._decoder.submit(hidden, length=int(hidden.shape[0]))

    def _decode_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """Decoder + vocos, one forward per distinct token count (see the design note)."""
        assert self.graphs is not None, "the graphs run where the seam runs models"
        out: list[np.ndarray | None] = [None] * len(items)
        by_length: dict[int, list[int]] = {}
        for i, hidden in enumerate(items):
            by_length.setdefault(int(hidden.shape[0]), []).append(i)
        for n, idx in by_length.items():
            waves = self.graphs.waveform(np.stack([items[i] for i in idx]))
            keep = self.c.samples_per_token * n - self.c.samples_per_token // 2
            for row, i in enumerate(idx):
                out[i] = np.ascontiguousarray(waves[row, :keep], dtype=np.float32)
        return [w for w in out if w is not None]

    def piece_wave(self, wave: np.ndarray, speed: float) -> np.ndarray:
        return time_stretch(wave, speed) if speed != 1.0 else wave

    def _postprocess(self, waves: list[np.ndarray], req: SpeechRequest
                     ) -> tuple[np.ndarray, bytes, list[tuple[int, int]]]:
        """Samples at the request's rate, the encoded file, and each piece's span in
        samples at the pack's rate (a piece past the output cap is left out, the one it
        cuts ends at the cut)."""
        wave, spans = stitch_with_spans([self.piece_wave(w, req.speed) for w in waves],
                                        self.crossfade)
        cap = int(self.settings.tts_max_output_s * self.c.sample_rate)
        wave = wave[:cap]
        spans = [(a, min(b, cap)) for a, b in spans if a < cap]
        samples = resample(peak_limit(wave), self.c.sample_rate, req.sample_rate)
        del wave
        return samples, encode_audio(samples, req.sample_rate, req.format), spans


ChattsPipeline = ChatTTSPipeline
"""The name the issue uses."""
