"""One live stream: audio in, CLAP windows and emotion utterances out, every limit enforced.

Design note. Each frame is decoded (service.live.decode) and handed to the window planner
(CLAP: windows cut at the stream's rate, each resampled alone as /classify resamples an
upload) and, resampled as a stream, to the endpointer (emotion): a
`StreamAnalyser` (service.live.analysis) that returns the windows, utterances and partial
due it found. Each window or utterance becomes one job that calls the same pipeline entry
points the HTTP routes call (`ClapPipeline.embed_window` + `score`,
`Emotion2vecPipeline.analyse_samples`), through the model's admission gate and its
batcher: live and HTTP work share forward passes, on one process or through the cluster's
seam. A window's log-mel reuses the frames it shares with the stream's previous window
(a stream at CLAP's rate: service.audio.logmel_cache), the same features for less CPU;
the cache is the stream's, dropped when it ends. A stream holds at most
`live_max_pending` jobs; a window or utterance beyond that is skipped with a `skipped`
event. Results go out in order per task through a bounded outbox; a client that leaves
`live_send_buffer` events unread is cut off (1008) and its jobs are cancelled. A stream
is read no faster than real time plus `live_max_ahead_s` (`_ahead_s`, the one measure): PCM
by the reader, which waits before its next frame; WebM/Ogg by the decoder thread, which
waits before its next frame while its bounded pipe fills and the reader then waits on it
(the reader cannot pace by bytes: it does not know what they decode to).

Partials (`emotion.partial_every_s`) are interim and best effort: each time the open
utterance has grown that much, one job computes it so far through the same entry point,
chained in the same per-task order (so a partial of utterance i goes out before its final).
At most one is in flight per stream (a partial due meanwhile is coalesced into the next);
none is started while the stream is at `live_max_pending`; one still running is cancelled
when its final is submitted or when a final would otherwise be skipped for want of room.
Each outcome is counted (session.done, audioserve_live_partials_total), never an event.

An utterance's final emotion starts once its audio is complete, before the end-pointer
confirms it (service.live.early, LIVE_EARLY_EMOTION): the confirmed utterance's job then
awaits that work instead of starting its own (the early work holds the admission slot).

Where the work runs. The analysis grows with a frame (up to LIVE_MAX_FRAME_BYTES of
audio: bytes to float, soxr, 10 s window copies, VAD), so none of it runs on the event
loop; the loop only turns a `Found` into jobs, in the order the steps ran. PCM: the
reader awaits each frame's decode + analysis in the app's CPU pool (one frame at a time
per stream, so the analyser is touched by one thread at a time); a fatal error meanwhile
(a client cut off) ends the wait at once and the step's result is dropped. WebM/Ogg: the
decoder thread analyses each block right after decoding it and posts only the result.
input.done's flush (the resampler's tail, the last window and utterance) runs in the
pool after the decoder thread has finished. A ProtocolError from a step (rate changed,
stream too long) ends the stream as before; results that arrive after it ended are
ignored (`_ended`). The shared pool, not one of its own: a frame's step queues behind the
window/utterance features already queued there (the stream's own included), which paces
a stream that produces work faster than the pool does it, and a stream cut off
meanwhile is not held by it (the wait above). A test hung when this moved off the loop;
the cause was the edge, not the pool: results now went out while the stream was read, so
a client that never read had unsent bytes left at the close, and uvicorn's
`transport.close()` waited for them to drain for ever (service.edge.server now resets
such a connection after the write timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketDisconnect

from batcher import BatcherClosed, DeadlineExceeded, Overloaded, due_since
from service.audio.logmel_cache import LogMelCache
from service.errors import ApiError, InvalidInput
from service.live import protocol as p
from service.live.analysis import Found, StreamAnalyser, WindowPlan
from service.live.decode import EncodedDecoder, PcmDecoder
from service.live.early import EarlyOutcome, EarlyStart
from service.live.vad import Endpointer, Utterance
from service.live.windows import Window
from service.pipelines.clap import ClapPipeline
from service.pipelines.clap_text import validate_labels, validate_template
from service.pipelines.emotion2vec import (
    Emotion2vecPipeline,
    EmotionOptions,
    EmotionResult,
    Granularity,
)
from service.routes.common import model_fields
from service.routes.emotion import emotion_body
from service.routes.json_body import json_limits
from service.runtime.admission import AdmissionGate, CpuWorkers
from service.runtime.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("audioserve.live")

_KINDS: dict[str, str] = {"classify": "clap", "emotion": "emotion2vec"}
REAL_TIME_DRIFT = 0.05
"""How much slower than real time a stream may run without falling behind (the idle
rule, `_receive_audio`): a client that paces a file with sleep() oversleeps a little on
every frame, and those would add up over an hour."""
_T = TypeVar("_T")


@dataclass
class Counts:
    windows: int = 0
    utterances: int = 0
    skipped: int = 0
    cancelled: int = 0
    partials: int = 0
    partials_coalesced: int = 0
    partials_skipped: int = 0
    partials_cancelled: int = 0


PartialOutcome = Literal["sent", "coalesced", "behind", "refused", "cancelled"]
"""The `outcome` label of audioserve_live_partials_total."""

PARTIAL_LAG_LABEL = "emotion_partial"
"""The `task` label of a partial's result lag (finals keep `classify` / `emotion`)."""


@dataclass
class _PartialJob:
    task: asyncio.Task[None]
    previous: asyncio.Task[None] | None
    """The emotion job it was chained after: its successor waits on this if it is cancelled."""


@dataclass
class _Outgoing:
    text: str
    task: str | None = None
    received_at: float = 0.0
    """When the result's last sample arrived (monotonic): its lag is measured from here."""


@dataclass
class LiveContext:
    """What a session needs from the app (no module state)."""

    settings: Settings
    metrics: Metrics
    cpu: CpuWorkers
    pipelines: dict[str, Any]
    gates: dict[str, AdmissionGate]


STAMP_DECIMALS = 6
"""Stream time to the microsecond: a sample lasts 20.8 us at 48 kHz, so `round(t * rate)`
gives back the exact sample of a stamp at any rate up to 1 MHz (0.1 ms did not: a 10 s
window cut from rounded stamps at 48 kHz could be 2 samples off, and /classify of it then
differed by 1e-5)."""


def _round(x: float) -> float:
    return round(x, STAMP_DECIMALS)


class LiveSession:
    def __init__(self, websocket: WebSocket, ctx: LiveContext) -> None:
        self.ws = websocket
        self.ctx = ctx
        self.settings = ctx.settings
        self._json_limits = json_limits(ctx.settings)
        self.metrics = ctx.metrics
        self.counts = Counts()
        self.audio_samples = 0
        self.input_rate: int | None = None
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[_Outgoing | None] = asyncio.Queue()
        self._fatal: asyncio.Future[p.ProtocolError | WebSocketDisconnect] = (
            asyncio.get_running_loop().create_future())
        self._pending: set[asyncio.Task[None]] = set()
        self._last_job: dict[str, asyncio.Task[None] | None] = {"classify": None,
                                                                "emotion": None}
        self._config: p.SessionConfig | None = None
        self._pcm: PcmDecoder | None = None
        self._encoded: EncodedDecoder | None = None
        self._windows: WindowPlan | None = None
        self._endpointer: Endpointer | None = None
        self._analyser: StreamAnalyser | None = None
        """Touched by one thread at a time (see the design note), never by the loop."""
        self._emotion_rate = 16_000
        self._texts: np.ndarray | None = None
        self._logmel: LogMelCache | None = None
        """CLAP's log-mel frames of the stream's last window, shared with the next."""
        self._labels: list[str] = []
        self._top_k = 0
        self._emotion_options = EmotionOptions()
        self._partial_every: int | None = None
        """Growth (samples at the model's rate) between partials; None: partials off."""
        self._partial: _PartialJob | None = None
        """The stream's partial job in flight (at most one)."""
        self._early: EarlyStart[EmotionResult] | None = None
        """The open utterance's emotion, started before its end is confirmed (None: off)."""
        self._first_audio_at: float | None = None
        self._ended = False
        """Set when the session stops: late analysis results are ignored."""
        self.end_reason = "done"
        """How the stream ended: done, closed (session.close), disconnected, or the error's
        code (the `reason` label of audioserve_live_closed)."""

    # -- the whole session -----------------------------------------------------------

    async def run(self) -> int:
        """Serve the stream; the close code it ended with."""
        sender = asyncio.create_task(self._send_loop())
        code = 1000
        try:
            self._start(await self._receive_config())
            await self._prepare_models()
            self._emit(self._created())
            if await self._receive_audio():
                await self._flush()
            else:
                self.end_reason = "closed"
                self._cancel_pending()
            c = self.counts
            self._emit(p.SessionDone(
                audio_s=_round(self.audio_samples / (self.input_rate or 1)),
                windows=c.windows, utterances=c.utterances, skipped=c.skipped,
                cancelled=c.cancelled, partials=c.partials,
                partials_coalesced=c.partials_coalesced, partials_skipped=c.partials_skipped,
                partials_cancelled=c.partials_cancelled))
        except p.ProtocolError as exc:
            code = exc.close_code
            self.end_reason = exc.code
            self._cancel_pending()
            log.info("live stream ended: %s (%s)", exc.code, exc.message)
            self._emit(exc.event(), force=True)
        except WebSocketDisconnect:
            self.end_reason = "disconnected"
            self._cancel_pending()
            sender.cancel()
            return 1001
        except Exception:  # a defect: said to the client, never a silent drop
            log.exception("live stream failed")
            code = p.CLOSE_CODES["internal_error"]
            self.end_reason = "internal_error"
            self._emit(p.ErrorEvent(code="internal_error", message="the server failed on "
                                    "this stream (logged); please report it"), force=True)
        finally:
            self._ended = True
            self._logmel = None
            self._cancel_pending()
            if self._encoded is not None:
                self._encoded.abort()
        await self._finish_sending(sender, code)
        return code

    async def _finish_sending(self, sender: asyncio.Task[None], code: int) -> None:
        """Send what is queued and close; a client that does not read gets no more than
        a bounded wait (its unsent events are dropped, the error and close tried once)."""
        grace = self.settings.live_close_timeout_s
        if self._slow():
            last = None
            while not self._outbox.empty():
                last = self._outbox.get_nowait()
            sender.cancel()
            if last is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.send_text(last.text), timeout=grace)
        else:
            self._outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, timeout=grace)
        sender.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code), timeout=grace)

    def _slow(self) -> bool:
        if not self._fatal.done():
            return False
        fatal = self._fatal.result()
        return isinstance(fatal, p.ProtocolError) and fatal.code == "slow_reader"

    # -- receiving ---------------------------------------------------------------------

    async def _next_message(self, timeout_s: float, on_timeout: p.ProtocolError
                            ) -> dict[str, Any]:
        if self._fatal.done():  # checked first: a client that keeps sending always has
            raise self._fatal.result()  # a message ready as well
        receive: asyncio.Future[Any] = asyncio.ensure_future(self.ws.receive())
        waits: set[asyncio.Future[Any]] = {receive, self._fatal}
        done, _ = await asyncio.wait(waits, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._fatal.done() or receive not in done:
            receive.cancel()
            raise self._fatal.result() if self._fatal.done() else on_timeout
        message: dict[str, Any] = dict(receive.result())
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        size = len(message.get("bytes") or message.get("text") or "")
        if size > self.settings.live_max_frame_bytes:
            raise p.ProtocolError("frame_too_large",
                                  f"a {size}-byte message; the limit is "
                                  f"{self.settings.live_max_frame_bytes} bytes "
                                  "(AUDIOSERVE_LIVE_MAX_FRAME_BYTES): send smaller frames")
        return message

    async def _receive_config(self) -> p.SessionConfig:
        timeout = self.settings.live_config_timeout_s
        message = await self._next_message(timeout, p.ProtocolError(
            "config_timeout", f"no session.config within {timeout:g} s of connecting"))
        text = message.get("text")
        if text is None:
            raise p.ProtocolError("invalid_message",
                                  "the first message must be a session.config JSON text frame")
        parsed = p.parse_client_message(text, self._json_limits)
        if not isinstance(parsed, p.SessionConfig):
            raise p.ProtocolError("invalid_message",
                                  f"the first message must be session.config, not {parsed.type}")
        return parsed

    async def _receive_audio(self) -> bool:
        """Read frames until input.done (True) or session.close (False).

        Idle is falling behind real time, the mirror of `_ahead_s`: the time spent waiting
        for the client's messages, beyond the duration of the audio they brought (plus
        REAL_TIME_DRIFT), adds up to at most `live_idle_timeout_s` (pauses add up). Empty
        frames, or a byte now and then, bring no audio, so they cannot hold a stream slot;
        the server's own time (analysis, pacing) is not counted against the client. With
        the cap on its audio, this bounds how long any stream stays open."""
        idle = self.settings.live_idle_timeout_s
        timeout = p.ProtocolError(
            "idle_timeout", f"the stream fell {idle:g} s behind real time: the server "
            "waited that much longer for audio than the audio it got lasts "
            "(AUDIOSERVE_LIVE_IDLE_TIMEOUT_S; pauses add up, empty frames bring none); "
            "send audio as it is captured, silence included, or input.done")
        waited = 0.0
        while True:
            audio_s = self.audio_samples / (self.input_rate or 1)
            slack = idle + audio_s * (1 + REAL_TIME_DRIFT) - waited
            asked = time.monotonic()
            message = await self._next_message(max(0.0, slack), timeout)
            waited += time.monotonic() - asked
            data = message.get("bytes")
            if data is not None:
                if data:
                    await self._on_frame(data)
                continue
            parsed = p.parse_client_message(message.get("text") or "", self._json_limits)
            if isinstance(parsed, p.SessionConfig):
                raise p.ProtocolError("invalid_message", "session.config was already sent; "
                                      "a stream has one configuration")
            return isinstance(parsed, p.InputDone)

    async def _on_frame(self, data: bytes) -> None:
        now = time.monotonic()
        if self._first_audio_at is None:
            self._first_audio_at = now
        if self._pcm is not None:
            self._apply(await self._analyse(self._analyse_pcm, data, now))
            await self._pace()
        elif self._encoded is not None:  # paced in its decoder thread (_analyse_decoded)
            await self._unless_fatal(self._encoded.feed(data))

    def _pcm_rate(self) -> int:
        assert self._config is not None and self._config.input.sample_rate is not None
        return self._config.input.sample_rate

    async def _pace(self) -> None:
        """Read PCM no faster than real time plus live_max_ahead_s (the client waits, in
        TCP)."""
        excess = self._ahead_s(self.audio_samples, self.input_rate)
        if excess > 0:
            await self._unless_fatal(asyncio.sleep(excess))

    def _ahead_s(self, samples: int, rate: int | None) -> float:
        """How far `samples` of audio run ahead of real time (since the first frame came)
        plus live_max_ahead_s: the wait before more is read or decoded (0: none)."""
        if self._first_audio_at is None or not rate:
            return 0.0
        ahead = samples / rate - (time.monotonic() - self._first_audio_at)
        return max(0.0, ahead - self.settings.live_max_ahead_s)

    # -- set-up ------------------------------------------------------------------------

    def _start(self, config: p.SessionConfig) -> None:
        s = self.settings
        if config.classify is None and config.emotion is None:
            raise p.ProtocolError("invalid_config",
                                  "nothing to do: set `classify`, `emotion` or both")
        for task in ("classify", "emotion"):
            kind = _KINDS[task]
            if getattr(config, task) is not None and kind not in self.ctx.pipelines:
                loaded = ", ".join(sorted(self.ctx.pipelines)) or "none"
                raise p.ProtocolError("model_not_loaded", f"`{task}` needs the {kind} model, "
                                      f"which is not loaded (loaded: {loaded})")
        i = config.input
        if i.format in p.PCM_FORMATS:
            if i.sample_rate is None:
                raise p.ProtocolError("invalid_config",
                                      f"input.sample_rate is required for {i.format}")
            channels = i.channels or 1
            self._pcm = PcmDecoder(i.format, channels)
            config = config.model_copy(update={"input": i.model_copy(
                update={"channels": channels})})
        else:
            self._encoded = EncodedDecoder(
                i.format, self._loop, self._analyse_decoded, self._fail,
                max_buffer=4 * s.live_max_frame_bytes)
        if config.classify is not None:
            config = config.model_copy(update={"classify": self._classify_config(
                config.classify)})
        if config.emotion is not None:
            emotion = config.emotion
            limit = min(s.emotion_max_seconds, s.max_audio_seconds)
            if emotion.max_utterance_s > limit:
                raise p.ProtocolError("invalid_config", f"emotion.max_utterance_s is "
                                      f"{emotion.max_utterance_s:g}; the limit is {limit:g} s "
                                      "(AUDIOSERVE_EMOTION_MAX_SECONDS)")
            if (emotion.partial_every_s is not None
                    and emotion.partial_every_s >= emotion.max_utterance_s):
                raise p.ProtocolError("invalid_config", f"emotion.partial_every_s is "
                                      f"{emotion.partial_every_s:g}; it must be under "
                                      f"max_utterance_s ({emotion.max_utterance_s:g} s), or "
                                      "no utterance ever gets a partial")
            pipeline: Emotion2vecPipeline = self.ctx.pipelines["emotion2vec"]
            self._endpointer = Endpointer(emotion, pipeline.constants.sample_rate)
            if s.live_early_emotion:
                self._early = EarlyStart(self._early_emotion, self._count_early)
            self._emotion_rate = self._endpointer.rate
            if emotion.partial_every_s is not None:
                self._partial_every = round(emotion.partial_every_s * self._endpointer.rate)
            self._emotion_options = EmotionOptions(granularity=Granularity(emotion.granularity))
        self._analyser = StreamAnalyser(
            windows=self._windows, endpointer=self._endpointer,
            partial_every=self._partial_every, max_stream_s=s.live_max_stream_seconds,
            count_audio=self.metrics.live_audio_seconds.inc)
        self._config = config

    def _classify_config(self, c: p.ClassifyConfig) -> p.ClassifyConfig:
        s = self.settings
        clap: ClapPipeline = self.ctx.pipelines["clap"]
        try:
            labels = validate_labels(c.labels, s)
            template = (validate_template(c.prompt_template, s.max_template_chars)
                        if c.prompt_template is not None else clap.default_template)
        except InvalidInput as exc:
            raise p.ProtocolError("invalid_config", f"classify: {exc.message}") from None
        if c.hop_s < s.live_min_hop_s:
            raise p.ProtocolError("invalid_config", f"classify.hop_s is {c.hop_s:g}; the "
                                  f"smallest is {s.live_min_hop_s:g} s "
                                  "(AUDIOSERVE_LIVE_MIN_HOP_S)")
        if clap.fused:
            raise p.ProtocolError("invalid_config", "live classify needs an unfused CLAP pack")
        self._labels = labels
        self._top_k = min(c.top_k or len(labels), len(labels))
        rate = clap.mel.sample_rate
        self._windows = WindowPlan(clap.mel.max_length_samples / rate, c.hop_s, rate)
        self._logmel = clap.window_cache()
        return c.model_copy(update={"labels": labels, "prompt_template": template,
                                    "top_k": self._top_k})

    async def _prepare_models(self) -> None:
        """The label prompts' embeddings, once per stream (cached across streams)."""
        config = self._config
        assert config is not None
        if config.classify is None:
            return
        clap: ClapPipeline = self.ctx.pipelines["clap"]
        template = config.classify.prompt_template
        assert template is not None
        prompts = [template.format(label=label) for label in self._labels]
        try:
            self._texts = await clap.embed_text(prompts)
        except (Overloaded, ApiError) as exc:
            raise p.ProtocolError("too_many_streams", f"the CLAP text model refused the "
                                  f"labels ({exc}); retry later") from None

    def _created(self) -> p.SessionCreated:
        assert self._config is not None
        s = self.settings
        models: dict[str, Any] = {}
        if self._config.classify is not None:
            clap: ClapPipeline = self.ctx.pipelines["clap"]
            models["clap"] = {**model_fields(clap.info(), "clap", "scores"),
                              "sample_rate": clap.mel.sample_rate,
                              "window_s": clap.mel.max_length_samples / clap.mel.sample_rate}
        if self._config.emotion is not None:
            emo: Emotion2vecPipeline = self.ctx.pipelines["emotion2vec"]
            models["emotion2vec"] = {**model_fields(emo.info(), "emotion2vec", "emotions"),
                                     "sample_rate": emo.constants.sample_rate,
                                     "vad": "webrtcvad"}
        limits = {"max_frame_bytes": s.live_max_frame_bytes,
                  "max_stream_s": s.live_max_stream_seconds,
                  "idle_timeout_s": s.live_idle_timeout_s,
                  "max_ahead_s": s.live_max_ahead_s,
                  "max_pending": s.live_max_pending,
                  "send_buffer": s.live_send_buffer}
        return p.SessionCreated(config=self._config.model_dump(), limits=limits, models=models)

    # -- audio -> windows and utterances -----------------------------------------------

    def _analyse_pcm(self, data: bytes, received_at: float) -> Found:
        """A PCM frame decoded and analysed (in the CPU pool); `received_at`: when the
        socket delivered it (results' lag counts from there, the pool's queue included)."""
        assert self._pcm is not None and self._analyser is not None
        return self._analyser.push(self._pcm.feed(data), self._pcm_rate(), received_at)

    def _analyse_decoded(self, block: np.ndarray, rate: int, received_at: float) -> float:
        """An encoded stream's decoded block, analysed in the decoder's thread; only the
        result goes to the loop. A ProtocolError ends the decoder (it reports it). Returns
        the decoder's wait: the stream's pace, counted on the samples decoded (the loop's
        `audio_samples` lag behind them)."""
        if self._ended:
            return 0.0
        assert self._analyser is not None
        found = self._analyser.push(block, rate, received_at)
        self._loop.call_soon_threadsafe(self._apply, found)
        return self._ahead_s(found.samples, found.rate)

    async def _analyse(self, fn: Callable[..., Found], *args: object) -> Found:
        """Run one analysis step in the CPU pool (its result is dropped if the stream
        fails meanwhile)."""
        return await self._unless_fatal(self.ctx.cpu.run(fn, *args))

    async def _unless_fatal(self, awaitable: Awaitable[_T]) -> _T:
        """Await `awaitable` unless the stream's fatal error comes first (a client cut
        off, a decoding error): that is raised at once and the wait cancelled."""
        work: asyncio.Future[_T] = asyncio.ensure_future(awaitable)
        waits: set[asyncio.Future[Any]] = {work, self._fatal}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            raise self._fatal.result()
        return work.result()

    def _fail(self, exc: p.ProtocolError) -> None:
        if not self._fatal.done():
            self._fatal.set_result(exc)

    def _apply(self, found: Found) -> None:
        """Submit what an analysis step found (on the loop, in the steps' order)."""
        if self._ended:
            return
        self.input_rate, self.audio_samples = found.rate, found.samples
        for job in found.jobs:
            if isinstance(job, Window):
                self._submit_window(job, found.received_at)
            else:
                self._submit_utterance(job, found.received_at)
        if found.partial is not None:
            self._maybe_partial(found.partial, found.received_at)
        if self._early is not None:
            self._early.offer(found.ending, found.received_at)

    async def _flush(self) -> None:
        """input.done: the decoder's tail, the last window and utterance, then every job."""
        if self._encoded is not None:  # the pipe's bytes are still decoded at the pace
            await self._unless_fatal(self._encoded.finish())
            if self._fatal.done():
                raise self._fatal.result()
        if self._pcm is not None and self._pcm.leftover():
            raise p.ProtocolError("unsupported_audio", f"the stream ended inside a sample "
                                  f"frame ({self._pcm.leftover()} bytes left over); frames "
                                  f"are {self._pcm.frame_bytes} bytes")
        assert self._analyser is not None
        self._apply(await self._analyse(self._analyser.finish))
        while self._pending:
            waits: set[asyncio.Future[Any]] = {*self._pending, self._fatal}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if self._fatal.done():
                raise self._fatal.result()

    # -- jobs ----------------------------------------------------------------------------

    def _submit_window(self, window: Window, received_at: float) -> None:
        rate = window.rate
        self._submit("classify", window.index, window.start / rate, window.end / rate,
                     received_at, lambda: self._classify(window, due=received_at))

    def _submit_utterance(self, utterance: Utterance, received_at: float) -> None:
        rate = self._emotion_rate
        self._cancel_partial()  # its final is here: the interim view is moot
        # its last sample came before the silence that confirmed it: lag and order count
        # from there (the frame received now is up to `min_silence_ms` later)
        due = received_at - self._confirmed_after(utterance)
        early = self._early.take(utterance) if self._early is not None else None
        started = self._submit("emotion", utterance.index, utterance.start / rate,
                               utterance.end / rate, due,
                               lambda: self._emotion(utterance, due=due, early=early),
                               admit=early is None)
        if early is not None and self._early is not None:
            self._early.settle(early, used=started)

    def _early_emotion(self, utterance: Utterance,
                       received_at: float) -> Coroutine[Any, Any, EmotionResult]:
        """An utterance's emotion started before its end is confirmed (service.live.early):
        due, as the confirmed one's would be, since its last sample arrived."""
        due = received_at - self._confirmed_after(utterance)

        async def compute() -> EmotionResult:
            async with self.ctx.gates["emotion2vec"].admit():
                return await self._emotion_result(utterance, due)
        return compute()

    def _count_early(self, outcome: EarlyOutcome) -> None:
        self.metrics.live_early_emotion.labels(outcome).inc()

    def _confirmed_after(self, utterance: Utterance) -> float:
        """Seconds between an utterance's last sample arriving and the end-pointer's
        silence confirming it: the audio received after its end, at real-time pace, and
        at most the silence waited for. Its result has been due since then, for the order
        in which the models' batches get the cores (batcher/gate.py)."""
        if self._endpointer is None or not self.input_rate:
            return 0.0
        after_s = self.audio_samples / self.input_rate - utterance.end / self._emotion_rate
        return min(max(after_s, 0.0), self._endpointer.confirm_s)

    def _submit(self, task: p.Task, index: int, start_s: float, end_s: float, received_at: float,
                compute: Callable[[], Awaitable[BaseModel]], *, admit: bool = True) -> bool:
        """Start a final's job (`admit`: through the model's admission gate); False when
        the stream is at live_max_pending (skipped, with an event)."""
        if len(self._pending) >= self.settings.live_max_pending:
            self._cancel_partial()  # finals have priority over an interim view
        if len(self._pending) >= self.settings.live_max_pending:
            self._skip(task, index, start_s, end_s, "behind",
                       f"{len(self._pending)} results of this stream are still being "
                       "computed (AUDIOSERVE_LIVE_MAX_PENDING): the models are behind")
            return False
        self._start_job(task, index, start_s, end_s, received_at, compute, partial=False,
                        admit=admit)
        return True

    def _start_job(self, task: p.Task, index: int, start_s: float, end_s: float,
                   received_at: float, compute: Callable[[], Awaitable[BaseModel]], *,
                   partial: bool, admit: bool = True) -> asyncio.Task[None]:
        previous = self._last_job[task]
        job = asyncio.create_task(self._job(task, index, start_s, end_s, received_at,
                                            compute, previous, partial, admit))
        self._last_job[task] = job
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)
        if partial:
            self._partial = _PartialJob(job, previous)
        return job

    async def _job(self, task: p.Task, index: int, start_s: float, end_s: float,
                   received_at: float, compute: Callable[[], Awaitable[BaseModel]],
                   previous: asyncio.Task[None] | None, partial: bool, admit: bool) -> None:
        gate = self.ctx.gates[_KINDS[task]]
        event: BaseModel | None = None
        refused: tuple[p.SkipReason, str] | None = None
        try:
            async with gate.admit() if admit else contextlib.nullcontext():
                event = await compute()
        except (Overloaded, BatcherClosed) as exc:
            refused = ("overloaded", str(exc))
        except DeadlineExceeded as exc:
            refused = ("timeout", str(exc))
        except InvalidInput as exc:
            refused = ("too_short", exc.message)
        except ApiError as exc:
            refused = ("overloaded" if exc.status in (503, 504) else "too_short", exc.message)
        except Exception:
            log.exception("live %s job failed", task)
            self._fail(p.ProtocolError("internal_error", f"computing {task} {index} failed"))
        if refused is not None:
            if partial:  # an interim view: counted, not said (its final still comes)
                self._count_partial("refused")
            else:
                self._skip(task, index, start_s, end_s, *refused)
        if event is None:
            return
        if previous is not None:  # results go out in order per task
            await asyncio.wait({previous})
        label: str = task
        if partial:
            label = PARTIAL_LAG_LABEL
            self._count_partial("sent")
        elif task == "classify":
            self.counts.windows += 1
        else:
            self.counts.utterances += 1
        self._emit(event, task=label, received_at=received_at)

    # -- partials ------------------------------------------------------------------------

    def _maybe_partial(self, utterance: Utterance, received_at: float) -> None:
        """Start the partial that fell due (`utterance`: the open one so far) unless one is
        in flight (coalesced) or the stream is at live_max_pending (skipped: finals have
        priority)."""
        if self._partial is not None and not self._partial.task.done():
            self._count_partial("coalesced")
            return
        if len(self._pending) >= self.settings.live_max_pending:
            self._count_partial("behind")
            return
        rate = self._emotion_rate
        self._start_job("emotion", utterance.index, utterance.start / rate,
                        utterance.end / rate, received_at,
                        lambda: self._emotion(utterance, partial=True), partial=True)

    def _cancel_partial(self) -> None:
        """Cancel the partial in flight (if any); the emotion job chained after it next
        waits on what it waited on, so results keep their order."""
        job, self._partial = self._partial, None
        if job is None or job.task.done():
            return
        job.task.cancel()
        self._pending.discard(job.task)
        if self._last_job["emotion"] is job.task:
            self._last_job["emotion"] = job.previous
        self._count_partial("cancelled")

    def _count_partial(self, outcome: PartialOutcome) -> None:
        c = self.counts
        if outcome == "sent":
            c.partials += 1
        elif outcome == "coalesced":
            c.partials_coalesced += 1
        elif outcome == "cancelled":
            c.partials_cancelled += 1
        else:
            c.partials_skipped += 1
        self.metrics.live_partials.labels(outcome).inc()

    async def _classify(self, window: Window, *, due: float) -> p.ClassifyWindow:
        clap: ClapPipeline = self.ctx.pipelines["clap"]
        assert self._texts is not None
        with due_since(due):
            audio = await clap.embed_window(window.samples, window.model_start, self._logmel)
        scores = clap.score(audio.embedding, self._texts, self._labels, self._top_k)
        rate = window.rate
        return p.ClassifyWindow(
            index=window.index, start_s=_round(window.start / rate),
            end_s=_round(window.end / rate), silent=all(s.silent for s in audio.spans),
            labels=[p.LabelScoreOut(label=s.label, probability=s.probability,
                                    similarity=s.similarity) for s in scores])

    async def _emotion(self, utterance: Utterance, partial: bool = False, *,
                       due: float | None = None, early: asyncio.Task[EmotionResult] | None = None,
                       ) -> p.EmotionUtterance | p.EmotionPartial:
        """`due`: since when the utterance's result has been due (None: from now);
        `early`: its result, started before its end was confirmed."""
        emo: Emotion2vecPipeline = self.ctx.pipelines["emotion2vec"]
        options = self._emotion_options
        result = await (early if early is not None else self._emotion_result(
            utterance, time.monotonic() if due is None else due))
        body = emotion_body(emo, result, options)
        start_s = utterance.start / emo.constants.sample_rate
        frames = body.get("frames")
        if frames is not None:  # in stream time
            frames["times_s"] = [_round(t + start_s) for t in frames["times_s"]]
            for segment in frames["segments"]:
                segment["start_s"] = _round(segment["start_s"] + start_s)
                segment["end_s"] = _round(segment["end_s"] + start_s)
        event = p.EmotionPartial if partial else p.EmotionUtterance
        return event(
            index=utterance.index, start_s=_round(start_s),
            end_s=_round(utterance.end / emo.constants.sample_rate),
            granularity=options.granularity.value, emotion=body["emotion"],
            scores=body["scores"], chunks=body["chunks"], frames=frames)

    async def _emotion_result(self, utterance: Utterance, due: float) -> EmotionResult:
        """The model's result for an utterance whose work has been due since `due`: the
        one call an early start and a confirmed utterance both make."""
        emo: Emotion2vecPipeline = self.ctx.pipelines["emotion2vec"]
        with due_since(due):
            return await emo.analyse_samples(utterance.samples, self._emotion_options)

    def _skip(self, task: p.Task, index: int, start_s: float, end_s: float,
              reason: p.SkipReason, message: str) -> None:
        self.counts.skipped += 1
        self.metrics.live_skipped.labels(task, reason).inc()
        self._emit(p.Skipped(task=task, index=index, start_s=_round(start_s),
                             end_s=_round(end_s), reason=reason, message=message))

    def _cancel_pending(self) -> None:
        self._cancel_partial()
        if self._early is not None:
            self._early.drop()
        for job in list(self._pending):
            if not job.done():
                job.cancel()
                self.counts.cancelled += 1
        self._pending.clear()

    # -- sending -------------------------------------------------------------------------

    def _emit(self, event: BaseModel, *, task: str | None = None, received_at: float = 0.0,
              force: bool = False) -> None:
        """Queue an event; a client that leaves live_send_buffer unread is cut off."""
        if not force and self._outbox.qsize() >= self.settings.live_send_buffer:
            self._fail(p.ProtocolError(
                "slow_reader", f"{self._outbox.qsize()} events unread "
                "(AUDIOSERVE_LIVE_SEND_BUFFER): read the results as they come"))
            return
        self._outbox.put_nowait(_Outgoing(event.model_dump_json(exclude_none=True), task,
                                          received_at))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            try:
                await self.ws.send_text(item.text)
            except Exception:  # the connection is gone (reset, closed by a keepalive)
                if not self._fatal.done():  # end now, not after its buffered audio
                    self._fatal.set_result(WebSocketDisconnect(1006))
                return
            if item.task is not None:
                lag = max(0.0, time.monotonic() - item.received_at)
                self.metrics.live_result_lag.labels(item.task).observe(lag)

