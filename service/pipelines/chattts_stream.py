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

from service.audio.encode import StreamingEncoder
from service.pipelines.chattts import (
    ChatTTSPipeline,
    PreparedSpeech,
    SpeechRequest,
    cut_to_budget,
)
from service.seam.handoff import SequenceStream
from service.tts.jobs import CodeStep, GenerationJob
from service.tts.slo import AudioClock
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


@dataclass(frozen=True)
class PieceMark:
    """Between audio chunks: piece `index` starts at sample `start` of the joined audio
    (the pack's rate), or, with `end`, is done: its samples are [start, end), neighbours
    overlapping by the crossfade."""

    index: int
    start: int
    end: int | None = None


class SpeechStream:
    """Async iterator of encoded audio bytes for one prepared request."""

    def __init__(self, pipeline: ChatTTSPipeline, req: SpeechRequest,
                 prepared: PreparedSpeech, *, open_ended: bool = False,
                 path: str = "http") -> None:
        """Reserves an engine place per piece (Overloaded if there is no room) and starts
        the first pieces; the caller must `abort()` or `aclose()` it. `open_ended`: more
        pieces come with `append` until `end_input` (a live utterance); `path` labels the
        stream's audio SLO metrics (http, sse, ws)."""
        self.pipeline = pipeline
        self.req = req
        self.prepared = prepared
        self.encoder = StreamingEncoder(req.format, req.sample_rate)
        self.media_type = self.encoder.media_type
        self.stats = StreamStats()
        self.slo = AudioClock(pipeline.ctx.metrics, path, req.sample_rate,
                              pipeline.settings.tts_slo_gap_ms / 1000)
        n = len(prepared.jobs)
        self.jobs: list[GenerationJob] = list(prepared.jobs)
        self.tokens: list[SequenceStream | None] = [None] * n
        """Each piece's engine stream, once it was started."""
        self._ready = [asyncio.Event() for _ in range(n)]
        self._generated = [asyncio.Event() for _ in range(n)]
        """Set once a piece's token count is final (generated, stopped or failed)."""
        self._queues: list[asyncio.Queue[object]] = [asyncio.Queue(PIECE_QUEUE_WINDOWS)
                                                     for _ in range(n)]
        self._tasks: list[asyncio.Task[None]] = []
        self.spans: list[tuple[int, int]] = []
        """[start, end) of each piece sent so far, in samples of the joined audio at the
        pack's rate (the SSE path's final event states them)."""
        self._reading = False
        self._input_done = not open_ended
        self._grown = asyncio.Event()
        self._ahead = max(1, pipeline.settings.tts_stream_pieces_ahead)
        self._generating = 0
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
            self._fill()
        except BaseException:
            self.abort()
            raise

    def append(self, job: GenerationJob) -> None:
        """One more piece at the end of an open-ended stream: its place is reserved now
        (Overloaded if there is none) and it starts as soon as fewer than
        `tts_stream_pieces_ahead` pieces of this stream generate."""
        if self._input_done or self._stopped:
            raise RuntimeError("the stream takes no more pieces")
        self.pipeline.engine.reserve(1)
        i = len(self.jobs)
        self.jobs.append(job)
        self.tokens.append(None)
        self._ready.append(asyncio.Event())
        self._generated.append(asyncio.Event())
        self._queues.append(asyncio.Queue(PIECE_QUEUE_WINDOWS))
        self.piece_tokens.append(0)
        self._reserved += 1
        if self._reading:
            self._tasks.append(asyncio.create_task(self._piece(i, self._queues[i])))
        self._grown.set()
        self._fill()

    def end_input(self) -> None:
        """No more pieces: the stream ends after the last one appended."""
        self._input_done = True
        self._grown.set()

    @property
    def pieces(self) -> int:
        return len(self.jobs)

    @property
    def truncated_at_s(self) -> float | None:
        """AUDIOSERVE_TTS_MAX_OUTPUT_S when the stream reached it (its audio stops there,
        later pieces are not spoken), else None; final once the audio is all read."""
        return self.pipeline.settings.tts_max_output_s if self.capped_piece is not None else None

    def _fill(self) -> None:
        """Start pieces, in order, into their reserved places while fewer than
        `tts_stream_pieces_ahead` generate (stopped, capped or none left: no-op)."""
        while (self._generating < self._ahead and not self._stopped
               and self._next < len(self.jobs) and self.capped_piece is None):
            i = self._next
            self.tokens[i] = self.pipeline.engine.open_stream(
                self.jobs[i], self.pipeline.settings.tts_stream_buffer_tokens,
                reserved=True)
            self._next, self._reserved = i + 1, self._reserved - 1
            self._generating += 1
            self._ready[i].set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._bytes()

    async def samples(self) -> AsyncIterator[np.ndarray]:
        """float32 chunks at the pack's rate after stitching and limiting (before
        resampling and encoding): what tests compare with the one-shot output."""
        async for item in self._joined():
            if isinstance(item, np.ndarray):
                yield item

    async def _queue(self, i: int) -> asyncio.Queue[object] | None:
        """Piece `i`'s queue once it exists; None at the end (input done, or the output
        cap reached in an earlier piece)."""
        while i >= len(self._queues) and not self._input_done:
            self._grown.clear()
            await self._grown.wait()
        if i >= len(self._queues) or (self.capped_piece is not None and i > self.capped_piece):
            return None
        return self._queues[i]

    async def _joined(self) -> AsyncIterator[np.ndarray | PieceMark]:
        """The stitched, limited audio, with a `PieceMark` where each piece starts and,
        once its last sample is out (its crossfade tail goes out with the next piece),
        where it ended."""
        self._reading = True
        self._tasks = [asyncio.create_task(self._piece(i, q))
                       for i, q in enumerate(self._queues)]
        stitcher = Stitcher(self.pipeline.crossfade)
        limiter = RunningLimiter()
        done: int | None = None  # the piece whose end mark waits for the next start
        announced = False

        def marks(i: int) -> list[PieceMark]:
            nonlocal done, announced
            if len(stitcher.starts) <= i or announced:
                return []
            announced = True
            out = [] if done is None else [PieceMark(done, stitcher.starts[done],
                                                     stitcher.ends[done])]
            done = None
            return [*out, PieceMark(i, stitcher.starts[i])]

        try:
            i = 0
            while (q := await self._queue(i)) is not None:
                stitcher.start_piece()
                announced = False
                while (item := await q.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, np.ndarray)
                    out = stitcher.feed(item, piece_done=False)
                    for mark in marks(i):
                        yield mark
                    if out.size:
                        yield limiter(out)
                out = stitcher.feed(np.zeros(0, np.float32), piece_done=True)
                for mark in marks(i):
                    yield mark
                if out.size:
                    yield limiter(out)
                done, i = i, i + 1
            if (out := stitcher.finish()).size:
                yield limiter(out)
            if done is not None:
                yield PieceMark(done, stitcher.starts[done], stitcher.ends[done])
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
        async for item in self.frames():
            if isinstance(item, bytes):
                yield item

    async def frames(self) -> AsyncIterator[bytes | PieceMark]:
        """Encoded audio with the pieces' marks between chunks. Resampling and encoding
        run in the CPU pool, a chunk at a time, in order: up to 96 tokens of audio each,
        MP3/Opus/AAC at 48 kHz, for every stream at once."""
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

        async for chunk in self._joined():
            if isinstance(chunk, PieceMark):
                if chunk.end is not None:
                    self.spans.append((chunk.start, chunk.end))
                yield chunk
                continue
            data, samples = await cpu.run(encode, chunk, False)
            self._sent(data, samples)
            if data:
                yield data
        data, samples = await cpu.run(encode, np.zeros(0, np.float32), True)
        self._sent(data, samples)
        if data:
            yield data
        self.slo.finish()
        log.info("stream done: %d pieces, %d tokens, %.2f s audio, first audio %.1f ms",
                 len(self.jobs), self.stats.tokens,
                 self.stats.samples / self.req.sample_rate,
                 1000 * (self.stats.first_audio_s or 0.0))

    def _sent(self, data: bytes, samples: int) -> None:
        self.stats.samples += samples
        if samples:
            self.slo.chunk(samples)
        if data:
            self._first_audio()
            self.stats.chunks += 1

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
            self._generated[i].set()
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
                self._cap(i)
                tokens.close()  # AUDIOSERVE_TTS_MAX_OUTPUT_S: this piece ends here
                break
            if window := planner.next(min(len(hidden), self._sure_tokens(i)),
                                      finished=False):
                wave = await p.decode_hidden(np.stack(hidden[window.start : window.stop]))
                await self._put(out, planner.cut(window, wave), stretch)
        self._generating -= 1
        self._generated[i].set()
        self._fill()  # this one is generated: the next piece may start
        for earlier in self._generated[:i]:  # their audio plays first: no wait for anyone
            await earlier.wait()
        kept = cut_to_budget(self.piece_tokens[: i + 1], self.budget)[0][-1]
        if kept < len(hidden):  # the cap falls inside this piece, now that those before
            del hidden[kept:]   # it are final: the one-shot path's cut
            self._cap(i)
        if (window := planner.next(len(hidden), finished=True)) is not None:
            wave = await p.decode_hidden(np.stack(hidden[window.start : window.stop]))
            await self._put(out, planner.cut(window, wave), stretch)
        if stretch is not None:
            await out.put(await p.ctx.cpu.run(stretch.finish))
        await out.put(_END)

    def _cap(self, i: int) -> None:
        """The output cap falls in piece `i`: the stream ends with the earliest such."""
        self.capped_piece = i if self.capped_piece is None else min(i, self.capped_piece)

    def _sure_tokens(self, i: int) -> int:
        """Tokens of piece `i` the output cap keeps whatever the pieces before it still
        generate (each at most its `max_new_tokens`): windows stay within them, so a piece
        the cap cuts later has sent no audio past the cut (the audio equals `/tts`'s)."""
        before = sum(self.piece_tokens[j] if self._generated[j].is_set()
                     else self.jobs[j].max_new_tokens for j in range(i))
        return self.budget - before

    async def _put(self, out: asyncio.Queue[object], wave: np.ndarray,
                   stretch: StreamingStretch | None) -> None:
        """Hand a window to the reader, stretched as it comes when speed != 1: the queue
        blocks a piece whose reader is behind, at every speed (back-pressure)."""
        if stretch is not None:
            wave = await self.pipeline.ctx.cpu.run(stretch.feed, wave)
            if not wave.size:
                return
        await out.put(wave)


async def open_stream(pipeline: ChatTTSPipeline, req: SpeechRequest, path: str = "http"
                      ) -> SpeechStream:
    """Validate, prepare, reserve every piece's place and start the first; return once it
    has its first token, so bad input (4xx), overload (503) and a missed deadline (504)
    are normal errors before any audio is sent. The caller must `aclose()` the stream."""
    prepared = await pipeline.prepare(req)
    stream = SpeechStream(pipeline, req, prepared, path=path)
    try:
        first = stream.tokens[0]
        assert first is not None
        await first.started()
    except BaseException:
        await stream.aclose()
        raise
    return stream
