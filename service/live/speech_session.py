"""One speech-stream session: text in as it is written, audio out sentence by sentence.

Design note. Three parts, one writer. The receive loop (`run`) parses every client
message (service.live.speech_protocol) and feeds the open utterance's `SentenceSplitter`
(cutting as `/tts` with the `split` that the config's `split_granularity` names: sentence,
clause, or none = `long`, whose pieces are complete only at `input.done`); each complete
sentence goes to that utterance's feeder task, which makes its engine job
(`ChatTTSPipeline.piece_job`: seed `seed + i` for sentence i, as `/tts` with the same
`split` seeds piece i) and appends it to the utterance's open-ended
`SpeechStream`, so generation starts at once, overlapping with the text still arriving,
and neighbouring sentences are joined by the same `Stitcher` crossfade as one request's
pieces: the utterance's audio equals `/tts`'s for the same text, seed and split. The
sender task alone writes to the socket: utterances in order, their audio, marks and
`session.done`. `input.cancel` aborts the utterances' streams in the receive loop (their
sequences leave the batch at the engine's next step, even while the sender waits on a
slow socket); the sender then drops what is unsent and says `audio.cancelled`.

Bounds: sentences given to the engine and not yet sent whole are at most
`tts_ws_max_pending_sentences` per session (later ones wait as text, so a fast writer
cannot flood the engine); utterances begun and not yet finished, empty ones too, at most
`tts_ws_max_pending_utterances` (a message that would begin one more waits, the socket
unread: back-pressure, so every per-utterance task, queue and event is bounded whatever
the client sends); every send must complete within `tts_stream_stall_timeout_s`
(the buffers behind it are the HTTP stream's: a client that stops reading pauses its
sequences, then loses them: error slow_reader); text per utterance and per session,
message size, idle time (no new text while nothing is made or sent), session time and
config time are settings (docs/speech-stream.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketDisconnect

from batcher import BatcherClosed, DeadlineExceeded, Overloaded
from service.errors import ApiError
from service.live import speech_protocol as p
from service.pipelines.chattts import ChatTTSPipeline, PreparedSpeech, SpeechRequest
from service.pipelines.chattts_stream import PieceMark, SpeechStream
from service.routes.json_body import json_limits
from service.runtime.metrics import Metrics
from service.settings import Settings
from service.tts.chunking import SentenceSplitter
from service.tts.model_names import unknown_model

log = logging.getLogger("audioserve.speech_stream")


@dataclass
class Utterance:
    index: int
    req: SpeechRequest
    sampling_seed: int
    splitter: SentenceSplitter
    speaker: np.ndarray | None
    inbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    """Sentences for the feeder, then None (input.done)."""
    texts: list[str] = field(default_factory=list)
    """The spoken sentences, by sentence index (ones with nothing to speak are dropped)."""
    chars: int = 0
    stream: SpeechStream | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the stream exists, or the utterance ended with nothing to speak."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    feeder: asyncio.Task[None] | None = None
    appended: int = 0
    done: int = 0
    sent_samples: int = 0
    ignored: dict[str, str] | None = None
    """The config's fields that have no effect, for the utterance's first event."""
    unspoken_since: float | None = None
    """When the text the splitter holds back (no sentence end yet) began to wait."""

    def abort(self) -> None:
        self.cancelled.set()
        if self.feeder is not None:
            self.feeder.cancel()
        if self.stream is not None:
            self.stream.abort()


def _fail_reason(exc: BaseException) -> p.ProtocolError:
    if isinstance(exc, p.ProtocolError):
        return exc
    if isinstance(exc, Overloaded | BatcherClosed):
        return p.ProtocolError("overloaded", f"the speech engine is full ({exc}); retry later")
    if isinstance(exc, DeadlineExceeded):
        return p.ProtocolError("timeout", "no decoding slot in time "
                               "(AUDIOSERVE_REQUEST_TIMEOUT_S); retry later")
    if isinstance(exc, ApiError):
        return p.ProtocolError("invalid_config", str(exc))
    log.error("speech session failed", exc_info=exc)
    return p.ProtocolError("internal_error",
                           "the server failed on this session (logged); please report it")


class SpeechSession:
    def __init__(self, websocket: WebSocket, settings: Settings, metrics: Metrics,
                 pipeline: ChatTTSPipeline) -> None:
        self.ws = websocket
        self.settings = settings
        self.metrics = metrics
        self.pipeline = pipeline
        self.config: p.SessionConfig | None = None
        self._speaker: np.ndarray | None = None
        self._ignored: dict[str, str] | None = None
        """Said on the first event of the next utterance (`SessionConfig.ignored`)."""
        self.end_reason = "done"
        self._open: Utterance | None = None
        """The utterance whose text is arriving (None between utterances)."""
        self._live: list[Utterance] = []
        """Utterances not yet sent whole or cancelled, in order."""
        self._queue: asyncio.Queue[Utterance | None] = asyncio.Queue()
        self._count = 0
        self._session_chars = 0
        self._pending = 0
        self._room = asyncio.Event()
        """Set when a sentence is sent whole or cancelled (room under the pending limit)."""
        self._finished = asyncio.Event()
        """Set when an utterance is finished (room under the utterance limit)."""
        self._feeding = asyncio.Lock()
        """Held by one feeder at a time, taken in utterance order: a later utterance's
        sentences taking the pending room would wait to be sent behind an earlier one
        that could then never get room to finish (the session hung)."""
        self._fatal: asyncio.Future[p.ProtocolError | WebSocketDisconnect] = (
            asyncio.get_running_loop().create_future())
        """Why the session must end, from a task beside the receive loop."""
        self._json_limits = json_limits(settings)
        self._opened_at = time.monotonic()
        self._progress_at = self._opened_at
        """When the client last added text, or audio was last being made or sent."""

    # -- the whole session -------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        code = 1000
        error: p.ProtocolError | None = None
        try:
            await self._receive_loop()
            self._end_open()
            self._queue.put_nowait(None)
            await self._wait_sender(sender)
        except WebSocketDisconnect:
            self.end_reason = "disconnected"
        except Exception as exc:  # every failure is said to the client
            error = _fail_reason(exc)
            code, self.end_reason = error.close_code, error.code
            log.info("speech session ended: %s (%s)", error.code, error.message)
        finally:
            for u in self._live:
                u.abort()
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            self.metrics.tts_ws_utterances.dec(len(self._live))
            self._live.clear()
        if self.end_reason == "disconnected":
            return
        grace = self.settings.live_close_timeout_s
        with contextlib.suppress(Exception):
            if error is not None:
                await asyncio.wait_for(self.ws.send_text(error.event().model_dump_json()),
                                       grace)
            await asyncio.wait_for(self.ws.close(code), grace)

    async def _wait_sender(self, sender: asyncio.Task[None]) -> None:
        waits: set[asyncio.Future[Any]] = {sender, self._fatal}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._fatal.done():
            raise self._fatal.result()
        sender.result()

    def _fail(self, exc: BaseException) -> None:
        if not self._fatal.done():  # a client gone while audio was sent: a disconnect
            self._fatal.set_result(exc if isinstance(exc, WebSocketDisconnect)
                                   else _fail_reason(exc))
        for u in self._live:
            u.abort()

    # -- receiving ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Until session.close (the sender then finishes what was asked for)."""
        first = True
        while True:
            text = await self._next_text(first)
            message = p.parse_client_message(text, self._json_limits)
            if first and not isinstance(message, p.SessionConfig):
                raise p.ProtocolError("invalid_message", "the first message must be "
                                      f"session.config, not {message.type}")
            if first:
                self._progress_at = time.monotonic()
            first = False
            if isinstance(message, p.SessionConfig):
                await self._configure(message)
            elif isinstance(message, p.InputText):
                if message.text:  # text is progress; other messages do not reset idle
                    self._progress_at = time.monotonic()
                await self._on_text(message.text)
            elif isinstance(message, p.InputDone):
                await self._utterance()  # an empty one too: it gets its session.done
                self._end_open()
            elif isinstance(message, p.InputCancel):
                self._cancel()
            else:
                return

    def _deadline(self, first: bool) -> tuple[float, str]:
        """When the client's quiet ends the session, and which limit that is (the nearer
        deadline names the error, not the clock after the wait: a timer may fire a little
        early, uvloop's by up to 1 ms)."""
        s = self.settings
        if first:
            return self._opened_at + s.tts_ws_config_timeout_s, "config"
        u = self._open
        return min((self._progress_at + s.tts_ws_idle_timeout_s, "idle"),
                   (math.inf if u is None or u.unspoken_since is None
                    else u.unspoken_since + s.tts_ws_idle_timeout_s, "unspoken"),
                   (self._opened_at + s.tts_ws_max_session_s, "session"))

    def _quiet_until(self, limit: str) -> None:
        """The client was quiet until `limit`'s deadline: the error it ends with, unless
        audio is being made or sent (then the client may wait, and the clock restarts)."""
        s = self.settings
        if limit == "config":
            raise p.ProtocolError("config_timeout", "no session.config within "
                                  f"{s.tts_ws_config_timeout_s:g} s "
                                  "(AUDIOSERVE_TTS_WS_CONFIG_TIMEOUT_S)")
        if limit == "session":
            raise p.ProtocolError("session_too_long", f"open for {s.tts_ws_max_session_s:g} s "
                                  "(AUDIOSERVE_TTS_WS_MAX_SESSION_S); open a new session")
        if self._busy():
            self._progress_at = time.monotonic()
            if self._open is not None and self._open.unspoken_since is not None:
                self._open.unspoken_since = self._progress_at
            return
        if limit == "unspoken":
            raise p.ProtocolError("idle_timeout", "text has waited unspoken for "
                                  f"{s.tts_ws_idle_timeout_s:g} s with nothing to send "
                                  "(AUDIOSERVE_TTS_WS_IDLE_TIMEOUT_S): end the sentence or "
                                  "send input.done")
        raise p.ProtocolError("idle_timeout", f"no new text for {s.tts_ws_idle_timeout_s:g} s "
                              "and nothing to send (AUDIOSERVE_TTS_WS_IDLE_TIMEOUT_S)")

    async def _next_text(self, first: bool) -> str:
        """The next message's text. Idle is no progress: no new text while nothing is
        being generated or sent, so messages that change nothing (a config again, a
        cancel with nothing to cancel, empty text) cannot keep a session open; and none
        stays open past `tts_ws_max_session_s`, whatever it sends. Text left unspoken (no
        sentence end yet) counts as idle after as long, so a character a minute, which is
        progress, cannot hold a session either."""
        while True:
            if self._fatal.done():
                raise self._fatal.result()
            deadline = self._deadline(first)
            receive: asyncio.Future[Any] = asyncio.ensure_future(self.ws.receive())
            waits: set[asyncio.Future[Any]] = {receive, self._fatal}
            done, _ = await asyncio.wait(waits, timeout=max(0.0, deadline[0] - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                if self._fatal.done():
                    raise self._fatal.result()
                self._quiet_until(deadline[1])  # raises unless audio is being made or sent
                continue
            message: dict[str, Any] = dict(receive.result())
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None:
                raise p.ProtocolError("invalid_message", "binary frames are not taken: "
                                      "send JSON text messages")
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.settings.tts_ws_max_message_bytes:
                cloning = ("; ref_audio (voice cloning) is not supported here: use `voice`"
                           if '"ref_audio"' in text else "")
                raise p.ProtocolError("message_too_large", f"a {size}-byte message; the limit "
                                      f"is {self.settings.tts_ws_max_message_bytes} "
                                      f"(AUDIOSERVE_TTS_WS_MAX_MESSAGE_BYTES){cloning}")
            return str(text)

    def _busy(self) -> bool:
        """Audio is being generated or sent (an open utterance whose sentences are all
        sent waits for the client: its silence counts as idle)."""
        return any(not u.cancelled.is_set() and (u is not self._open or u.appended > u.done
                                                  or not u.inbox.empty())
                   for u in self._live)

    async def _configure(self, config: p.SessionConfig) -> None:
        if self._open is not None:
            raise p.ProtocolError("invalid_message", "session.config arrived inside an "
                                  "utterance; send it after input.done")
        if problems := config.refused():
            raise p.ProtocolError("invalid_config", "; ".join(problems))
        if (problem := unknown_model(config.model or "chattts")) is not None:
            raise p.ProtocolError("invalid_config", problem)
        req = self._request(config)
        self.pipeline.check_output(req)  # 413-class -> invalid_config
        self._speaker = await self.pipeline.speaker(req)  # an unknown voice: said now
        self.config = config
        self._ignored = config.ignored() or None

    def _request(self, c: p.SessionConfig) -> SpeechRequest:
        return SpeechRequest(text="", voice=c.voice or p.DEFAULT_VOICE,
                             speed=1.0 if c.speed is None else c.speed,
                             sampling_seed=c.seed, temperature=c.temperature, top_p=c.top_p,
                             top_k=c.top_k, max_new_tokens=c.max_new_tokens,
                             min_new_tokens=c.min_new_tokens,
                             format=c.response_format, sample_rate=self.pipeline.c.sample_rate,
                             split=p.GRANULARITY_SPLIT[c.split_granularity])

    async def _utterance(self) -> Utterance:
        """The open utterance, or a new one once the session has room for it."""
        if self._open is None:
            await self._room_for_utterance()
            assert self.config is not None
            req = self._request(self.config)
            u = Utterance(self._count, req, self.pipeline.sampling_seed(req),
                          SentenceSplitter(self.settings.tts_piece_max_chars, req.split),
                          self._speaker, ignored=self._ignored)
            self._ignored = None
            self._count += 1
            u.feeder = asyncio.create_task(self._feed(u))
            self._open = u
            self._live.append(u)
            self.metrics.tts_ws_utterances.inc()
            self._queue.put_nowait(u)
        return self._open

    async def _room_for_utterance(self) -> None:
        """Back-pressure, as for pending sentences: while the limit's utterances are
        unfinished the socket is not read, so its unread messages stay in the client's
        and the kernel's buffers, not here. The sender makes the room (or, for a client
        that does not read, the stall timeout ends the session)."""
        while len(self._live) >= self.settings.tts_ws_max_pending_utterances:
            self._finished.clear()
            finished: asyncio.Future[Any] = asyncio.ensure_future(self._finished.wait())
            try:
                await asyncio.wait({finished, self._fatal},
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                finished.cancel()
            if self._fatal.done():
                raise self._fatal.result()

    def _end_open(self) -> None:
        u, self._open = self._open, None
        if u is not None:
            for sentence in u.splitter.flush():
                u.inbox.put_nowait(sentence)
            u.inbox.put_nowait(None)

    async def _on_text(self, text: str) -> None:
        if not text:  # nothing to speak: not fed to the splitter, which rescans what waits
            return
        s = self.settings
        u = await self._utterance()
        u.chars += len(text)
        self._session_chars += len(text)
        if u.chars > s.tts_ws_max_utterance_chars:
            raise p.ProtocolError("text_too_long", f"utterance {u.index} has {u.chars} "
                                  f"characters; the limit is {s.tts_ws_max_utterance_chars} "
                                  "(AUDIOSERVE_TTS_WS_MAX_UTTERANCE_CHARS): send input.done "
                                  "sooner")
        if self._session_chars > s.tts_ws_max_session_chars:
            raise p.ProtocolError("text_too_long", f"the session sent {self._session_chars} "
                                  f"characters; the limit is {s.tts_ws_max_session_chars} "
                                  "(AUDIOSERVE_TTS_WS_MAX_SESSION_CHARS)")
        sentences = u.splitter.feed(text)
        for sentence in sentences:
            u.inbox.put_nowait(sentence)
        if not u.splitter.pending.strip():
            u.unspoken_since = None
        elif sentences or u.unspoken_since is None:
            u.unspoken_since = time.monotonic()

    def _cancel(self) -> None:
        """Barge-in: every utterance in progress stops now (the sender reports each)."""
        self._open = None
        for u in self._live:
            if not u.cancelled.is_set():
                u.abort()
                self._pending -= u.appended - u.done  # its audio.done events stop here
                self.metrics.tts_ws_cancelled.inc()
        self._room.set()

    # -- generating --------------------------------------------------------------------

    async def _feed(self, u: Utterance) -> None:
        """The utterance's sentences, in order, into its stream as engine jobs."""
        try:
            async with self._feeding:
                await self._feed_sentences(u)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)

    async def _feed_sentences(self, u: Utterance) -> None:
        spk = u.speaker
        while (sentence := await u.inbox.get()) is not None:
            while self._pending >= self.settings.tts_ws_max_pending_sentences:
                self._room.clear()
                await self._room.wait()
            first = u.stream is None
            deadline = (time.monotonic() + self.settings.request_timeout_s
                        if first else None)
            job = await self.pipeline.piece_job(u.req, spk, sentence, len(u.texts),
                                                u.sampling_seed, start_by=deadline)
            if job is None or u.cancelled.is_set():
                continue
            if u.stream is None:
                u.stream = SpeechStream(self.pipeline, u.req,
                                        PreparedSpeech((), u.sampling_seed, {}),
                                        open_ended=True, path="ws")
                u.ready.set()
            u.stream.append(job)
            u.texts.append(sentence)
            u.appended += 1
            self._pending += 1
        if u.stream is not None:
            u.stream.end_input()
        u.ready.set()

    # -- sending -----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while (u := await self._queue.get()) is not None:
                await self._send_utterance(u)
                self._live.remove(u)
                self.metrics.tts_ws_utterances.dec()
                self._finished.set()
                del u  # not kept while the next is awaited
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)

    async def _send(self, data: BaseModel | bytes) -> None:
        timeout = self.settings.tts_stream_stall_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data.model_dump_json())
        except TimeoutError:
            self.metrics.rejections.labels("chattts_ws", "stalled_reader").inc()
            raise p.ProtocolError("slow_reader", f"the client took no audio for {timeout:g} "
                                  "s (AUDIOSERVE_TTS_STREAM_STALL_TIMEOUT_S): generation "
                                  "stopped") from None

    async def _until_cancelled(self, u: Utterance, step: asyncio.Future[Any]) -> bool:
        """Wait for `step`; False (and `step` cancelled) if the utterance is cancelled.
        If the sender itself is cancelled (session over), `step` is cancelled too: no
        task it started is left pending."""
        if not u.cancelled.is_set():
            cancel = asyncio.ensure_future(u.cancelled.wait())
            try:
                await asyncio.wait({step, cancel}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                step.cancel()
                raise
            finally:
                cancel.cancel()
        if u.cancelled.is_set():
            step.cancel()
            with contextlib.suppress(BaseException):
                await step
            return False
        return True

    async def _send_utterance(self, u: Utterance) -> None:
        ready = await self._until_cancelled(u, asyncio.ensure_future(u.ready.wait()))
        if ready and u.stream is not None:
            await self._send_audio(u, u.stream)
        if u.cancelled.is_set():
            rate = self.pipeline.c.sample_rate
            await self._send(p.AudioCancelled(
                utterance_index=u.index, sent_samples=u.sent_samples,
                sent_s=round(u.sent_samples / rate, 6), sentences_done=u.done,
                ignored=self._take_ignored(u)))
            return
        slo = u.stream.slo.summary() if u.stream is not None else {}
        await self._send(p.SessionDone(
            utterance_index=u.index, total_sentences=len(u.texts),
            audio_s=slo.get("audio_s", 0.0), first_audio_s=slo.get("first_audio_s"),
            underrun_s=slo.get("underrun_s", 0.0),
            truncated_at_s=u.stream.truncated_at_s if u.stream is not None else None,
            ignored=self._take_ignored(u)))

    @staticmethod
    def _take_ignored(u: Utterance) -> dict[str, str] | None:
        """The config's ignored fields, once: for the utterance's first event."""
        ignored, u.ignored = u.ignored, None
        return ignored

    async def _send_audio(self, u: Utterance, stream: SpeechStream) -> None:
        rate = self.pipeline.c.sample_rate
        frames = aiter(stream.frames())
        step: asyncio.Future[Any] | None = None
        try:
            while await self._until_cancelled(u, step := asyncio.ensure_future(
                    anext(frames))):
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                if isinstance(item, bytes):
                    await self._send(item)
                    u.sent_samples = stream.stats.samples
                elif item.end is None:
                    await self._send(p.AudioStart(
                        utterance_index=u.index, sentence_index=item.index,
                        sentence_text=u.texts[item.index], format=u.req.format,
                        sample_rate=rate, demo=self.pipeline.pack.manifest.demo,
                        ignored=self._take_ignored(u)))
                else:
                    await self._sentence_done(u, item, rate)
        finally:
            if step is not None and not step.done():  # the sender itself was cancelled
                step.cancel()  # (session over): a running generator cannot be closed
                with contextlib.suppress(BaseException):
                    await step
            await frames.aclose()  # type: ignore[attr-defined]

    async def _sentence_done(self, u: Utterance, mark: PieceMark, rate: int) -> None:
        assert mark.end is not None
        await self._send(p.AudioDone(
            utterance_index=u.index, sentence_index=mark.index, start_sample=mark.start,
            end_sample=mark.end, start_s=round(mark.start / rate, 6),
            end_s=round(mark.end / rate, 6)))
        if not u.cancelled.is_set():
            u.done += 1
            self._pending -= 1
            self._room.set()

