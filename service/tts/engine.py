"""The continuous-batching engine: ChatTTS's GPT decoded step by step for many requests.

Design note
-----------
One engine thread owns the `gpt`/`embed_*`/`head_text` sessions, the step scheduler
(`batcher.steps`) and the batch's KV cache; the event loop only posts commands (add,
abort) to its inbox and awaits futures, so ORT never runs on the event loop. Each step:

1. `plan = scheduler.schedule()`: aborted rows are evicted from the cache, new sequences
   admitted (FIFO, up to `max_active` rows);
2. one batched decode step for the rows that were already running (`gpt_step.py`: each
   row's last token embedded, `gpt` run on the cache's left-padded past with per-row
   positions, every row sampled with its own seeded generator);
3. each admitted sequence is prefilled alone (B=1: prefill is exact and needs no
   padding), its first token sampled, and its cache rows joined below the batch;
4. `scheduler.update` turns tokens into events; finished rows leave the cache at once and
   their future gets the tokens plus the hidden states that predicted them (audio
   decoding happens outside, in the pipeline's decode batcher).

Deadlines and flow control: a job's `start_by` is checked before every step, and a
sequence still waiting for a slot then fails with `DeadlineExceeded` (never run; the
service answers 504). A stream (`open_stream`) asks to pause its sequence when its reader
falls behind (`service.tts.token_stream`): the row's cache is taken out of the batch and
kept (`plan.paused`), its slot goes to whoever waits, and on resume the kept rows join
again (`plan.resumed`) with no prefill.

Exactness: a row's inputs (its own past, mask, positions, seeded RNG) never depend on its
batch-mates, so with fp32 graphs its tokens are those of a solo run, paused or not. A
failed step fails the sequences in the cache (its state is unknown) and the loop goes on;
if the thread itself dies, `healthy` goes False and every waiting future fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from batcher import BatcherClosed, BatchObserver, BatchStats, DeadlineExceeded, Overloaded
from batcher.steps import (
    Admission,
    FinishReason,
    ScheduledSeq,
    SeqOutput,
    SeqRequest,
    SeqStatus,
    StepConfig,
    StepEvent,
    StepScheduler,
)
from service.tts.gpt_step import GPTStepper
from service.tts.jobs import (
    CodeStep,
    EngineStats,
    GenerationJob,
    GenerationResult,
    LiveSequence,
    PassKind,
)
from service.tts.kv_cache import (
    BatchKVCache,
    DeviceKVCache,
    PreallocatedKVCache,
    RowCache,
)
from service.tts.model import TTSGraphs
from service.tts.token_stream import TokenStream

log = logging.getLogger("audioserve.tts.engine")


class KVCacheKind(Enum):
    AUTO = "auto"
    """DEVICE on CUDA, PRESENT on CPU."""
    PRESENT = "present"
    """Host numpy arrays; each step's presents become the next past (kv_cache.py)."""
    DEVICE = "device"
    """OrtValues where the session runs, through IO binding."""
    PREALLOCATED = "preallocated"
    """A fixed buffer with in-place column writes: measured, not recommended."""


@dataclass(frozen=True)
class EngineConfig:
    step: StepConfig = field(default_factory=StepConfig)
    max_waiting: int = 256
    static_wait_ms: float = 50.0
    """STATIC admission only: how long an idle engine waits for a batch to fill."""
    kv_cache: KVCacheKind = KVCacheKind.AUTO



@dataclass(frozen=True)
class _Add:
    live: LiveSequence


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Pause:
    request_id: str


@dataclass(frozen=True)
class _Resume:
    request_id: str


_Command = _Add | _Abort | _Pause | _Resume


class _Stop:
    pass


def _run_deliveries(items: list[tuple[LiveSequence, CodeStep]]) -> None:
    """On the event loop: each stream's token callback, in order."""
    for live, step in items:
        if live.on_token is not None:
            live.on_token(step)


class GenerationEngine:
    """Continuous batching of ChatTTS's GPT; `await generate(job)` from the event loop."""

    def __init__(self, graphs: TTSGraphs, config: EngineConfig | None = None,
                 *, name: str = "tts_engine", observer: BatchObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.graphs = graphs
        self._clock = clock
        """What `GenerationJob.start_by` is measured on (a test steps it by hand)."""
        self.stepper = GPTStepper(graphs)
        self._observer = observer
        self.config = config or EngineConfig()
        self.name = name
        self.scheduler = StepScheduler(self.config.step)
        self.cache = self._new_cache()
        self._inbox: queue.SimpleQueue[_Command | _Stop] = queue.SimpleQueue()
        self._live: dict[str, LiveSequence] = {}
        self._parked: dict[str, RowCache] = {}
        """Cache rows of paused sequences, kept out of the batch until they resume."""
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._outstanding = 0
        self._lock = threading.Lock()
        self._stats = {"steps": 0, "decode_steps": 0, "decode_rows": 0, "aborted": 0,
                       "paused": 0, "expired": 0}
        self._times = {"decode": 0.0, "prefill": 0.0}
        self._deliveries: list[tuple[LiveSequence, CodeStep]] = []

    def _new_cache(self) -> BatchKVCache:
        c = self.graphs.c
        kind = self.config.kv_cache
        if kind == KVCacheKind.AUTO:
            kind = KVCacheKind.DEVICE if self.graphs.provider == "cuda" else KVCacheKind.PRESENT
        if kind == KVCacheKind.PREALLOCATED:
            return PreallocatedKVCache(c.num_layers, c.num_heads, c.head_dim,
                                       self.config.step.max_active,
                                       self.config.step.max_seq_len + 1)
        if kind == KVCacheKind.DEVICE:
            return DeviceKVCache(c.num_layers, c.num_heads, c.head_dim,
                                 self.graphs.provider, self.graphs.device_id)
        return BatchKVCache(c.num_layers, c.num_heads, c.head_dim)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._accepting = True
            if self._observer is not None:
                self._observer.on_limit(self.config.step.max_active)
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def stop(self) -> None:
        """Refuse new jobs, let the admitted ones finish, then end the thread."""
        self._accepting = False
        if self._thread is not None:
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)

    def stats(self) -> EngineStats:
        return EngineStats(
            steps=self._stats["steps"], decode_steps=self._stats["decode_steps"],
            decode_rows=self._stats["decode_rows"], decode_s=self._times["decode"],
            prefill_s=self._times["prefill"], cache_copies=self.cache.copies,
            cache_step_s=self.cache.copy_s["step"],
            cache_membership_s=self.cache.copy_s["membership"],
            aborted=self._stats["aborted"], paused=self._stats["paused"],
            expired=self._stats["expired"],
        )

    # -- the event loop's side -------------------------------------------------------

    async def generate(self, job: GenerationJob) -> GenerationResult:
        """Queue a job and wait for its tokens. Cancelling the caller aborts the sequence."""
        live = self._submit(job, None)
        try:
            return await live.future
        except asyncio.CancelledError:
            self._inbox.put(_Abort(job.request_id))
            raise
        finally:
            self._release()

    def open_stream(self, job: GenerationJob, max_buffered: int | None = None, *,
                    reserved: bool = False) -> TokenStream:
        """Queue a CODE job now and return its token stream (see token_stream.py): its
        tokens as they are sampled, then the result; paused while `max_buffered` tokens
        wait unread. The caller must `aclose()` it (that aborts an unfinished sequence).
        `reserved`: it takes a place held by `reserve` instead of a new one."""
        if job.kind != PassKind.CODE:
            raise ValueError("only audio-code jobs stream")
        holder: list[TokenStream] = []
        live = self._submit(job, lambda step: holder[0].deliver(step), reserved=reserved)
        holder.append(TokenStream(job.request_id, self, live.future, max_buffered))
        return holder[0]

    async def stream(self, job: GenerationJob
                     ) -> AsyncGenerator[CodeStep | GenerationResult, None]:
        """`open_stream` as a generator without flow control; closing it aborts."""
        tokens = self.open_stream(job)
        try:
            async for item in tokens:
                yield item
        finally:
            await tokens.aclose()

    def check_capacity(self, sequences: int = 1) -> None:
        """Raise now what `generate`/`stream` would raise for `sequences` more jobs, so a
        stream is refused with a 503 before its response starts, not in the middle."""
        if not self._accepting or not self.healthy:
            raise BatcherClosed(f"{self.name} is not accepting work")
        limit = self.config.max_waiting + self.config.step.max_active
        if self._outstanding + sequences > limit:
            raise Overloaded(f"{self.name}: {self._outstanding} sequences queued",
                             retry_after_s=2.0)

    def reserve(self, sequences: int) -> None:
        """Hold places for `sequences` jobs submitted later (`open_stream(...,
        reserved=True)`), so a request is refused whole now or never; a place never used
        must be given back with `release()`."""
        with self._lock:
            self.check_capacity(sequences)
            self._outstanding += sequences

    def _submit(self, job: GenerationJob, on_token: Callable[[CodeStep], None] | None,
                reserved: bool = False) -> LiveSequence:
        with self._lock:
            if reserved:
                self.check_capacity(0)  # only: still accepting, thread alive
            else:
                self.check_capacity()
                self._outstanding += 1
        loop = asyncio.get_running_loop()
        live = LiveSequence(job, loop.create_future(), loop, time.perf_counter(),
                            np.random.default_rng(job.seed), on_token=on_token)
        self._inbox.put(_Add(live))
        return live

    def _release(self) -> None:
        with self._lock:
            self._outstanding -= 1

    release = _release
    """A stream's caller is done with its sequence (`SequenceControl`)."""

    @property
    def active(self) -> int:
        """Sequences admitted, paused or waiting (tests and benchmarks watch it drain)."""
        s = self.scheduler
        return s.num_running + s.num_waiting + s.num_paused

    def abort(self, request_id: str) -> None:
        """Thread-safe: the sequence leaves at the engine's next step."""
        self._inbox.put(_Abort(request_id))

    def pause(self, request_id: str) -> None:
        """Thread-safe: the sequence leaves the batch, its cache kept, until `resume`."""
        self._inbox.put(_Pause(request_id))

    def resume(self, request_id: str) -> None:
        self._inbox.put(_Resume(request_id))

    # -- the engine thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            stopping = False
            # paused sequences do not hold a stop up: they wait for readers (who are
            # gone at shutdown) and are failed below with everything still unfinished
            while not (stopping and not self.scheduler.has_work()):
                stopping |= self._drain_inbox(block=not self.scheduler.has_work())
                self._expire_waiting()
                if self._static_should_wait(stopping):
                    continue
                if self.scheduler.has_work():
                    self._step()
        except BaseException as exc:  # the thread must not die silently
            log.critical("%s: engine thread died", self.name, exc_info=exc)
            for live in self._live.values():
                live.resolve(None, exc)
            self._live.clear()
            raise
        for live in self._live.values():
            live.resolve(None, BatcherClosed(f"{self.name} stopped"))
        self._live.clear()
        self._parked.clear()

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands; True when asked to stop."""
        stop = False
        try:
            command = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                stop |= self._apply(command)
                command = self._inbox.get_nowait()
        except queue.Empty:
            return stop

    def _apply(self, command: _Command | _Stop) -> bool:
        if isinstance(command, _Stop):
            return True
        if isinstance(command, _Abort):
            rid = command.request_id
            live, status = self._live.get(rid), self.scheduler.status(rid)
            if live is not None and self.scheduler.abort(rid):
                self._stats["aborted"] += 1
                if status != SeqStatus.RUNNING:  # waiting or paused: gone now, else next step
                    self._live.pop(rid)
                    self._parked.pop(rid, None)
                live.cancel()
            return False
        if isinstance(command, _Pause):
            if self.scheduler.pause(command.request_id):
                self._stats["paused"] += 1
            return False
        if isinstance(command, _Resume):
            self.scheduler.resume(command.request_id)
            return False
        live = command.live
        job = live.job
        try:
            self.scheduler.add(SeqRequest(job.request_id, live.prompt_len, job.max_new_tokens))
        except ValueError as exc:
            live.resolve(None, exc)
            return False
        self._live[job.request_id] = live
        return False

    def _expire_waiting(self) -> None:
        """Fail every never-admitted sequence whose `start_by` has passed (never run)."""
        now = self._clock()
        late = [live for live in self._live.values()
                if live.job.start_by is not None and now >= live.job.start_by
                and live.admitted_at == 0.0]
        for live in late:
            rid = live.job.request_id
            if self.scheduler.status(rid) == SeqStatus.WAITING and self.scheduler.abort(rid):
                self._live.pop(rid)
                self._stats["expired"] += 1
                if self._observer is not None:
                    self._observer.on_reject("deadline")
                live.resolve(None, DeadlineExceeded(
                    f"{self.name}: no decoding slot within the request's deadline; it was "
                    "never started"))

    def _static_should_wait(self, stopping: bool) -> bool:
        """STATIC mode: an idle engine waits a little for its batch to fill."""
        cfg = self.config
        waiting = self.scheduler.num_waiting
        if (cfg.step.admission != Admission.STATIC or stopping or self.scheduler.num_running
                or waiting == 0 or waiting >= cfg.step.max_active):
            return False
        oldest = min((v.submitted_at for v in self._live.values() if v.admitted_at == 0.0),
                     default=0.0)  # only resumed sequences waiting: do not wait
        remaining = cfg.static_wait_ms / 1000.0 - (time.perf_counter() - oldest)
        if remaining <= 0:
            return False
        time.sleep(min(remaining, 0.005))
        return True

    def _step(self) -> None:
        started = time.perf_counter()
        plan = self.scheduler.schedule()
        for rid in plan.evicted_ids:
            self._live.pop(rid, None)  # its caller was told (cancelled) when it aborted
        self.cache.remove(plan.evicted_ids)
        for row in self.cache.take(plan.paused_ids):
            self._parked[row.request_id] = row
        self.cache.join([self._parked.pop(rid) for rid in plan.resumed_ids])
        try:
            outputs = self._decode(plan.decode) if plan.decode else {}
            t0 = time.perf_counter()
            rows = []
            for scheduled in plan.prefill:
                output, row = self._prefill(scheduled)
                outputs[scheduled.request_id] = output
                rows.append(row)
            self.cache.join(rows)
            self._times["prefill"] += time.perf_counter() - t0
            events = self.scheduler.update(plan, outputs)
        except Exception as exc:
            log.exception("%s: step %d failed", self.name, plan.step)
            self._deliveries.clear()
            self._fail_batch(plan.scheduled, exc)
            return
        self._stats["steps"] += 1
        self._report(plan.decode, plan.prefill, time.perf_counter() - started)
        finished = [e for e in events if e.finished and e.finish != FinishReason.ABORTED]
        self.cache.remove([e.request_id for e in finished])
        self._deliver()  # before completions: a stream's tokens precede its result
        for event in finished:
            self._complete(event)

    def _report(self, decode: tuple[ScheduledSeq, ...], prefill: tuple[ScheduledSeq, ...],
                seconds: float) -> None:
        """One step as a batch for metrics: rows decoded, admissions' queue waits, and the
        share of the KV cache that is left padding."""
        if self._observer is None:
            return
        waits = []
        for s in prefill:
            live = self._live.get(s.request_id)
            if live is not None:
                waits.append(live.admitted_at - live.submitted_at)
        mask = self.cache.mask
        padding = 1.0 - float(mask.mean()) if mask.size else 0.0
        self._observer.on_batch(BatchStats(size=len(decode) + len(prefill),
                                           limit=self.config.step.max_active,
                                           queue_waits_s=tuple(waits), compute_s=seconds,
                                           padding_fraction=padding, failed=False))
        self._observer.on_queue_depth(self.scheduler.num_waiting)

    def _fail_batch(self, scheduled: tuple[ScheduledSeq, ...], exc: Exception) -> None:
        doomed = {s.request_id for s in scheduled} | set(self.cache.ids)
        for rid in doomed:
            self.scheduler.abort(rid)
            live = self._live.pop(rid, None)
            if live is not None:
                live.resolve(None, exc)
        self.cache.remove(list(self.cache.ids))

    # -- model work (engine thread), through the stepper ---------------------------------

    def _decode(self, decode: tuple[ScheduledSeq, ...]) -> dict[str, SeqOutput]:
        t0 = time.perf_counter()
        if {s.request_id for s in decode} != set(self.cache.ids):
            raise RuntimeError("decode plan and KV cache disagree")
        lives = [self._live[rid] for rid in self.cache.ids]
        outputs = {live.job.request_id: self._record(live, *sampled)
                   for live, sampled in zip(lives, self.stepper.decode(lives, self.cache),
                                            strict=True)}
        self._stats["decode_steps"] += 1
        self._stats["decode_rows"] += len(lives)
        self._times["decode"] += time.perf_counter() - t0
        return outputs

    def _prefill(self, scheduled: ScheduledSeq) -> tuple[SeqOutput, RowCache]:
        live = self._live[scheduled.request_id]
        live.admitted_at = time.perf_counter()
        sampled, row = self.stepper.prefill(live)
        return self._record(live, *sampled), row

    def _record(self, live: LiveSequence, ids: np.ndarray, hidden: np.ndarray | None) -> SeqOutput:
        live.add_token(ids)
        eos = bool((ids == self.stepper.eos(live.job.kind)).any())
        if hidden is not None:
            live.hiddens.append(np.array(hidden, np.float32))
            if live.on_token is not None and not eos:
                self._deliveries.append((live, CodeStep(token=ids, hidden=live.hiddens[-1])))
        return SeqOutput(token=ids, eos=eos)

    def _deliver(self) -> None:
        """Hand this step's tokens to the streams: one wake-up per event loop per step,
        not one per token (32 streams would otherwise cost 32 cross-thread calls)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[LiveSequence, CodeStep]]] = {}
        for live, step in self._deliveries:
            by_loop.setdefault(live.loop, []).append((live, step))
        self._deliveries.clear()
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(_run_deliveries, items)

    def _complete(self, event: StepEvent) -> None:
        live = self._live.pop(event.request_id, None)
        if live is None:
            return
        assert event.finish is not None
        kept = len(live.tokens) - (1 if event.finish == FinishReason.EOS else 0)
        c = self.graphs.c
        if live.job.kind == PassKind.CODE:
            tokens = (np.stack(live.tokens[:kept]) if kept
                      else np.zeros((0, c.num_vq), np.int64))
            hidden = (np.stack(live.hiddens[:kept]) if kept
                      else np.zeros((0, c.hidden_size), np.float32))
        else:
            tokens = np.array([int(t[0]) for t in live.tokens[:kept]], np.int64)
            hidden = None
        now = time.perf_counter()
        live.resolve(GenerationResult(
            request_id=event.request_id, tokens=tokens, hidden=hidden, finish=event.finish,
            queued_s=live.admitted_at - live.submitted_at, generate_s=now - live.admitted_at,
        ), None)
