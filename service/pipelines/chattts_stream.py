"""Streamed ChatTTS speech: audio bytes while the engine is still generating.

Design note. Every piece of the text is one engine sequence. Places in the engine's queue
are reserved for all of them at once (a request is refused whole, before any audio), but
only `tts_stream_pieces_ahead` pieces are generating at a time: the next starts when one
finishes generating, so a long stream still overlaps its pieces while a stream whose
client stopped reading holds only that many sequences (paused) instead of flooding the
queue ahead of everyone else. `open_stream` returns once the first piece has its first
token, so a request that cannot start in time is a normal 504. A task per piece reads
the engine's per-token events and, every `tts_stream_chunk_tokens` tokens, decodes an
overlapping window (`service.tts.streaming.WindowPlanner`: exact seams) through the
shared decode batcher; windows of many streams have the same token count and share
forwards. The response
drains the pieces IN ORDER (later pieces buffer while earlier ones play), joins them with
the same crossfade as the one-shot path, limits peaks with a running gain, resamples
with a streaming soxr and encodes with `StreamingEncoder`. With `speed` != 1 each window
goes through the piece's `StreamingStretch` (the whole-piece phase vocoder, sample for
sample, ~2 frames behind), so a stretched stream flows, and pauses, window by window too
(it used to collect a whole piece first: a client that never read never paused it).
Closing the iterator (client gone) cancels the piece tasks, which
closes their engine streams and aborts the sequences at the next step.

Bounded buffers: each piece hands the reader at most `PIECE_QUEUE_WINDOWS` decoded windows;
a piece whose reader is behind blocks there, stops reading its token stream, and that
stream pauses the sequence once `tts_stream_buffer_tokens` tokens wait
(service/tts/token_stream.py). A client that stops reading therefore stops its
generation within a bounded amount of audio, and the response gives up on it after
`tts_stream_stall_timeout_s` (service/routes/streaming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import soxr

from service.audio_encode import StreamingEncoder
from service.pipelines.chattts import ChatTTSPipeline, PreparedSpeech, SpeechRequest
from service.seam import SequenceStream
from service.tts.jobs import CodeStep
from service.tts.streaming import RunningLimiter, Stitcher, WindowPlanner
from service.tts.stretch import StreamingStretch

log = logging.getLogger("audioserve.tts.stream")

_END = object()
PIECE_QUEUE_WINDOWS = 2
"""Decoded windows a piece may hold for the reader before it stops taking tokens."""


@dataclass
class StreamStats:
    """Filled in while the stream runs (the benchmark and logs read it)."""

    started: float = field(default_factory=time.perf_counter)
    first_audio_s: float | None = None
    tokens: int = 0
    samples: int = 0
    chunks: int = 0


class SpeechStream:
    """Async iterator of encoded audio bytes for one prepared request."""

    def __init__(self, pipeline: ChatTTSPipeline, req: SpeechRequest,
                 prepared: PreparedSpeech) -> None:
        """Reserves an engine place per piece (Overloaded if there is no room) and starts
        the first pieces; the caller must `abort()` or `aclose()` it."""
        self.pipeline = pipeline
        self.req = req
        self.prepared = prepared
        self.encoder = StreamingEncoder(req.format, req.sample_rate)
        self.media_type = self.encoder.media_type
        self.stats = StreamStats()
        n = len(prepared.jobs)
        self.tokens: list[SequenceStream | None] = [None] * n
        """Each piece's engine stream, once it was started."""
        self._ready = [asyncio.Event() for _ in range(n)]
        self._tasks: list[asyncio.Task[None]] = []
        self._ahead = max(1, pipeline.settings.tts_stream_pieces_ahead)
        self.budget = pipeline.token_budget(req)
        self.piece_tokens = [0] * n
        self.capped_piece: int | None = None
        """The piece at which AUDIOSERVE_TTS_MAX_OUTPUT_S was reached: the stream ends
        with it (`cut_to_budget`'s rule: its tokens and all before it reach the budget)."""
        pipeline.engine.reserve(n)
        self._reserved = n
        self._next = 0
        self._stopped = False
        try:
            for _ in range(min(self._ahead, n)):
                self._start_next()
        except BaseException:
            self.abort()
            raise

    def _start_next(self) -> None:
        """Submit the next piece into its reserved place (none left, or stopped: no-op)."""
        i = self._next
        if self._stopped or i >= len(self.tokens) or self.capped_piece is not None:
            return
        self.tokens[i] = self.pipeline.engine.open_stream(
            self.prepared.jobs[i], self.pipeline.settings.tts_stream_buffer_tokens,
            reserved=True)
        self._next, self._reserved = i + 1, self._reserved - 1
        self._ready[i].set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._bytes()

    async def samples(self) -> AsyncIterator[np.ndarray]:
        """float32 chunks at the pack's rate after stitching and limiting (before
        resampling and encoding): what tests compare with the one-shot output."""
        queues: list[asyncio.Queue[object]] = [asyncio.Queue(PIECE_QUEUE_WINDOWS)
                                               for _ in self.tokens]
        self._tasks = [asyncio.create_task(self._piece(i, q)) for i, q in enumerate(queues)]
        stitcher = Stitcher(self.pipeline.crossfade)
        limiter = RunningLimiter()
        try:
            for i, q in enumerate(queues):
                if self.capped_piece is not None and i > self.capped_piece:
                    break  # the output cap was reached in an earlier piece
                stitcher.start_piece()
                while (item := await q.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, np.ndarray)
                    if (out := stitcher.feed(item, piece_done=False)).size:
                        yield limiter(out)
                if (out := stitcher.feed(np.zeros(0, np.float32), piece_done=True)).size:
                    yield limiter(out)
            if (out := stitcher.finish()).size:
                yield limiter(out)
        finally:
            await self.aclose()

    def abort(self) -> None:
        """Stop now: close every engine stream (aborting the sequences still generating)
        and cancel the piece tasks. Never suspends (safe in a cancelled task's cleanup);
        idempotent; safe before `samples` ever ran."""
        self._stopped = True
        for tokens in self.tokens:
            if tokens is not None:
                tokens.close()
        engine = self.pipeline.engine
        for _ in range(self._reserved):  # places of pieces that never started
            engine.release()
        self._reserved = 0
        for task in self._tasks:
            task.cancel()

    async def aclose(self) -> None:
        """`abort`, then wait for the piece tasks to end."""
        self.abort()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _bytes(self) -> AsyncIterator[bytes]:
        """Resampling and encoding run in the CPU pool, a chunk at a time, in order: up to
        96 tokens of audio each, MP3/Opus/AAC at 48 kHz, for every stream at once."""
        rate = self.pipeline.c.sample_rate
        resampler = (None if self.req.sample_rate == rate else
                     soxr.ResampleStream(rate, self.req.sample_rate, 1, dtype="float32",
                                         quality="HQ"))
        cpu = self.pipeline.ctx.cpu

        def encode(chunk: np.ndarray, last: bool) -> tuple[bytes, int]:
            if resampler is not None:
                chunk = resampler.resample_chunk(chunk, last=last)
            data = self.encoder.write(chunk) if chunk.size else b""
            return (data + self.encoder.flush() if last else data), len(chunk)

        async for chunk in self.samples():
            data, samples = await cpu.run(encode, chunk, False)
            self.stats.samples += samples
            if data:
                self._first_audio()
                self.stats.chunks += 1
                yield data
        data, samples = await cpu.run(encode, np.zeros(0, np.float32), True)
        self.stats.samples += samples
        if data:
            self._first_audio()
            yield data
        log.info("stream done: %d pieces, %d tokens, %.2f s audio, first audio %.1f ms",
                 len(self.prepared.jobs), self.stats.tokens,
                 self.stats.samples / self.req.sample_rate,
                 1000 * (self.stats.first_audio_s or 0.0))

    def _first_audio(self) -> None:
        if self.stats.first_audio_s is None:
            self.stats.first_audio_s = time.perf_counter() - self.stats.started
            self.pipeline.ctx.metrics.stage_seconds.labels("chattts", "first_audio").observe(
                self.stats.first_audio_s)

    async def _piece(self, i: int, out: asyncio.Queue[object]) -> None:
        await self._ready[i].wait()
        tokens = self.tokens[i]
        assert tokens is not None
        try:
            await self._run_piece(i, tokens, out)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, who raises it
            await out.put(exc)
        finally:
            tokens.close()

    async def _run_piece(self, i: int, tokens: SequenceStream,
                         out: asyncio.Queue[object]) -> None:
        p = self.pipeline
        planner = WindowPlanner(p.c.samples_per_token, p.settings.tts_stream_chunk_tokens,
                                p.stream_context, p.stream_lookahead,
                                p.settings.tts_stream_max_chunk_tokens)
        hidden: list[np.ndarray] = []
        stretch = StreamingStretch(self.req.speed) if self.req.speed != 1.0 else None
        async for event in tokens:
            if not isinstance(event, CodeStep):
                break
            hidden.append(event.hidden)
            self.stats.tokens += 1
            self.piece_tokens[i] += 1
            if sum(self.piece_tokens[: i + 1]) >= self.budget:
                self.capped_piece = min(i, self.capped_piece if self.capped_piece is not None
                                        else i)
                tokens.close()  # AUDIOSERVE_TTS_MAX_OUTPUT_S: this piece ends here
                break
            if window := planner.next(len(hidden), finished=False):
                wave = await p.decode_hidden(np.stack(hidden[window.start : window.stop]))
                await self._put(out, planner.cut(window, wave), stretch)
        self._start_next()  # this one is generated: the next piece may start
        if (window := planner.next(len(hidden), finished=True)) is not None:
            wave = await p.decode_hidden(np.stack(hidden[window.start : window.stop]))
            await self._put(out, planner.cut(window, wave), stretch)
        if stretch is not None:
            await out.put(await p.ctx.cpu.run(stretch.finish))
        await out.put(_END)

    async def _put(self, out: asyncio.Queue[object], wave: np.ndarray,
                   stretch: StreamingStretch | None) -> None:
        """Hand a window to the reader, stretched as it comes when speed != 1: the queue
        blocks a piece whose reader is behind, at every speed (back-pressure)."""
        if stretch is not None:
            wave = await self.pipeline.ctx.cpu.run(stretch.feed, wave)
            if not wave.size:
                return
        await out.put(wave)


async def open_stream(pipeline: ChatTTSPipeline, req: SpeechRequest) -> SpeechStream:
    """Validate, prepare, reserve every piece's place and start the first; return once it
    has its first token, so bad input (4xx), overload (503) and a missed deadline (504)
    are normal errors before any audio is sent. The caller must `aclose()` the stream."""
    prepared = await pipeline.prepare(req)
    stream = SpeechStream(pipeline, req, prepared)
    try:
        first = stream.tokens[0]
        assert first is not None
        await first.started()
    except BaseException:
        await stream.aclose()
        raise
    return stream
