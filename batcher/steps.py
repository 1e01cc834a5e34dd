"""The step scheduler for autoregressive decoding: who prefills and who decodes each step.

Design note (vLLM's split in plain data)
----------------------------------------
The engine's loop is three calls: `plan = schedule()`, run the model for `plan`,
`events = update(plan, outputs)`. The scheduler owns the sequences' bookkeeping and
nothing else: it never sees tensors, tokens are opaque objects, and the model side
reports per sequence only "this token, and was it an end-of-sequence".

- Admission is strict FIFO from the waiting queue: a step admits the head while there is
  a free cache slot, the step's prefill budget (sequences, prompt tokens) allows it, and
  the admission policy agrees. When the head does not fit, nobody behind it jumps ahead,
  so no request starves behind a stream of small ones. The first prefill of a step is
  always allowed whatever its prompt length, otherwise a long prompt could never start.
- Cache slots come from a `SlotAllocator`: `allocate` reserves a slot and the sequence's
  worst-case token count (prompt + max new tokens) and answers None when there is no
  room; the head then waits for a finisher to `free` its slot.
- A prefilled sequence yields its first token from the prefill itself and joins the
  batched decode at the next step (as vLLM does); `plan.decode` holds the sequences that
  were running before this step.
- A sequence leaves in the `update` that finishes it (EOS or max tokens): its slot is free
  for the very next `schedule`. `abort` removes a waiting sequence at once; a running one
  is dropped at the next `schedule`, whose `plan.evicted` tells the engine which cache
  rows to drop, and that plan's `update` reports it finished with reason ABORTED.
- Flow control: `pause` takes a running sequence out of the batch at the next `schedule`
  (its slot is freed and `plan.paused` tells the engine to park its cache rows), so a
  sequence whose consumer stopped reading costs no compute and holds no slot; at most
  `max_paused` sequences are paused at once (their parked caches are memory). `resume`
  queues it again AHEAD of the waiting queue (it started long ago) and it rejoins the batch
  from its parked cache, no prefill, listed in both `plan.resumed` and `plan.decode`.
- `Admission.STATIC` (wait until the running set is empty, then admit a whole batch) exists
  as a baseline for benchmarks; one-request-at-a-time is `max_active=1`.

Not thread-safe by design: one engine thread calls every method (it forwards aborts from
other threads through its own inbox).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum


class FinishReason(Enum):
    EOS = "eos"
    MAX_TOKENS = "max_tokens"
    ABORTED = "aborted"


class SeqStatus(IntEnum):
    """Ordered so that `status >= FINISHED` means the sequence is gone."""

    WAITING = 0
    RUNNING = 1
    PAUSED = 2
    """Out of the batch, its cache parked, holding no slot (flow control)."""
    FINISHED = 3


class Admission(Enum):
    CONTINUOUS = "continuous"
    """Admit new sequences at every step, between decode steps of the running ones."""
    STATIC = "static"
    """Admit only when nothing is running: batches run to completion (a baseline)."""


@dataclass(frozen=True)
class StepConfig:
    max_active: int = 8
    """Sequences decoding together (rows of the batched decode step)."""
    max_prefills_per_step: int = 4
    max_prefill_tokens: int = 4096
    """Prompt tokens admitted in one step (the first prefill of a step is always allowed)."""
    max_seq_len: int = 4096
    """Prompt + new tokens of one sequence (the model's position limit)."""
    admission: Admission = Admission.CONTINUOUS
    max_paused: int = 32
    """Sequences paused at once; a pause asked beyond it is refused (the sequence runs on)."""

    def __post_init__(self) -> None:
        if min(self.max_active, self.max_prefills_per_step, self.max_seq_len) < 1:
            raise ValueError(f"invalid step config: {self}")


@dataclass(frozen=True)
class SeqRequest:
    request_id: str
    prompt_tokens: int
    max_new_tokens: int


@dataclass(frozen=True)
class ScheduledSeq:
    request_id: str
    slot: int
    prompt_tokens: int
    num_generated: int
    """Tokens generated before this step."""


@dataclass(frozen=True)
class StepPlan:
    step: int
    prefill: tuple[ScheduledSeq, ...]
    """Admitted this step: run their prompt; each yields its first token."""
    decode: tuple[ScheduledSeq, ...]
    """Running since an earlier step: one batched decode step, one token each."""
    evicted: tuple[ScheduledSeq, ...]
    """Running sequences aborted since the last plan: drop their cache rows now."""
    paused: tuple[ScheduledSeq, ...] = ()
    """Running sequences paused since the last plan: take their cache rows out, keep them."""
    resumed: tuple[ScheduledSeq, ...] = ()
    """Paused sequences readmitted this step: put their kept rows back before decoding
    (they are in `decode` too)."""

    @property
    def evicted_ids(self) -> tuple[str, ...]:
        return tuple(s.request_id for s in self.evicted)

    @property
    def paused_ids(self) -> tuple[str, ...]:
        return tuple(s.request_id for s in self.paused)

    @property
    def resumed_ids(self) -> tuple[str, ...]:
        return tuple(s.request_id for s in self.resumed)

    @property
    def empty(self) -> bool:
        return not (self.prefill or self.decode or self.evicted or self.paused)

    @property
    def scheduled(self) -> tuple[ScheduledSeq, ...]:
        return self.prefill + self.decode


@dataclass(frozen=True)
class SeqOutput:
    """What the model produced for one scheduled sequence."""

    token: object
    eos: bool = False


@dataclass(frozen=True)
class StepEvent:
    request_id: str
    token: object
    num_generated: int
    finish: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish is not None


class SlotAllocator:
    """Cache slots: at most `max_slots` rows and `max_tokens` reserved tokens in all.

    A sequence reserves its worst case (prompt + max new tokens) when admitted, so a
    running sequence can never run out of cache mid-flight; `allocate` says None when
    either limit would be exceeded.
    """

    def __init__(self, max_slots: int, max_tokens: int | None = None) -> None:
        self.max_slots = max_slots
        self.max_tokens = max_tokens
        self._free = list(range(max_slots - 1, -1, -1))
        self._reserved: dict[int, int] = {}

    @property
    def reserved_tokens(self) -> int:
        return sum(self._reserved.values())

    def fits_ever(self, tokens: int) -> bool:
        return self.max_tokens is None or tokens <= self.max_tokens

    def allocate(self, tokens: int) -> int | None:
        if not self._free:
            return None
        if self.max_tokens is not None and self.reserved_tokens + tokens > self.max_tokens:
            return None
        slot = self._free.pop()
        self._reserved[slot] = tokens
        return slot

    def free(self, slot: int) -> None:
        if self._reserved.pop(slot, None) is not None:
            self._free.append(slot)
            self._free.sort(reverse=True)  # lowest slot first: rows stay compact


@dataclass(eq=False)
class _Seq:
    request: SeqRequest
    status: SeqStatus = SeqStatus.WAITING
    slot: int = -1
    num_generated: int = 0
    aborted: bool = field(default=False)
    pausing: bool = False
    """Pause asked while running: it leaves the batch at the next `schedule`."""

    def scheduled(self) -> ScheduledSeq:
        return ScheduledSeq(
            self.request.request_id, self.slot, self.request.prompt_tokens, self.num_generated
        )


class StepScheduler:
    """Plans each decoding step; see the module's design note."""

    def __init__(self, config: StepConfig, allocator: SlotAllocator | None = None) -> None:
        self.config = config
        self.allocator = allocator or SlotAllocator(config.max_active)
        self._waiting: deque[_Seq] = deque()
        self._resuming: deque[_Seq] = deque()
        """Paused sequences asked to go on: admitted before anything in `_waiting`."""
        self._running: dict[str, _Seq] = {}
        self._paused: dict[str, _Seq] = {}
        self._step = 0

    # -- requests --------------------------------------------------------------------

    def add(self, request: SeqRequest) -> None:
        """Queue a sequence. Raises ValueError when it could never be scheduled."""
        total = request.prompt_tokens + request.max_new_tokens
        if request.prompt_tokens < 1 or request.max_new_tokens < 1:
            raise ValueError(f"{request.request_id}: needs a prompt and >= 1 new token")
        if total > self.config.max_seq_len or not self.allocator.fits_ever(total):
            raise ValueError(
                f"{request.request_id}: {total} tokens exceed the limit "
                f"({self.config.max_seq_len} per sequence)"
            )
        if self._find(request.request_id) is not None:
            raise ValueError(f"{request.request_id}: already scheduled")
        self._waiting.append(_Seq(request))

    def abort(self, request_id: str) -> bool:
        """Forget a sequence; a running one frees its slot at the next `schedule`."""
        seq = self._find(request_id)
        if seq is None or seq.aborted:
            return False
        if seq.status == SeqStatus.WAITING:
            (self._resuming if seq in self._resuming else self._waiting).remove(seq)
            seq.status = SeqStatus.FINISHED
        elif seq.status == SeqStatus.PAUSED:
            del self._paused[request_id]
            seq.status = SeqStatus.FINISHED
        seq.aborted = True
        return True

    def pause(self, request_id: str) -> bool:
        """Take a running (or resuming) sequence out of the batch until `resume`. False
        when it is not running, or `max_paused` sequences are paused already."""
        seq = self._find(request_id)
        if seq is None or seq.aborted or seq.pausing or seq.status == SeqStatus.PAUSED:
            return False
        if seq in self._resuming:  # asked to go on, then to stop again before it could
            self._resuming.remove(seq)
            seq.status = SeqStatus.PAUSED
            self._paused[request_id] = seq
            return True
        pausing = sum(s.pausing for s in self._running.values())
        if seq.status != SeqStatus.RUNNING or len(self._paused) + pausing >= \
                self.config.max_paused:
            return False
        seq.pausing = True
        return True

    def resume(self, request_id: str) -> bool:
        """Let a paused sequence go on: it takes the next free slot, ahead of new ones."""
        seq = self._find(request_id)
        if seq is None or seq.aborted:
            return False
        if seq.pausing:  # not out of the batch yet: simply stay
            seq.pausing = False
            return True
        if seq.status != SeqStatus.PAUSED:
            return False
        del self._paused[request_id]
        seq.status = SeqStatus.WAITING
        self._resuming.append(seq)
        return True

    def has_requests(self) -> bool:
        """Anything not finished, paused sequences included."""
        return bool(self._waiting or self._resuming or self._running or self._paused)

    def has_work(self) -> bool:
        """Something a step could run (paused sequences wait for `resume`)."""
        return bool(self._waiting or self._resuming or self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._resuming)

    @property
    def num_paused(self) -> int:
        return len(self._paused)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def status(self, request_id: str) -> SeqStatus | None:
        seq = self._find(request_id)
        return None if seq is None else seq.status

    # -- the step --------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        self._step += 1
        evicted = self._evict_aborted()
        paused = self._park_paused()
        resumed = tuple(seq.scheduled() for seq in self._readmit())
        decode = tuple(seq.scheduled() for seq in self._running.values())
        prefill = tuple(seq.scheduled() for seq in self._admit())
        return StepPlan(self._step, prefill, decode, evicted, paused, resumed)

    def update(self, plan: StepPlan, outputs: Mapping[str, SeqOutput]) -> list[StepEvent]:
        """Append each scheduled sequence's token; finished ones leave now. The plan's
        evicted sequences are reported first, finished with reason ABORTED."""
        events = [StepEvent(s.request_id, None, s.num_generated, FinishReason.ABORTED)
                  for s in plan.evicted]
        for scheduled in plan.scheduled:
            seq = self._running.get(scheduled.request_id)
            if seq is None or seq.aborted:
                continue  # aborted while the step ran: evicted at the next schedule
            output = outputs.get(scheduled.request_id)
            if output is None:
                raise ValueError(f"step {plan.step}: no output for {scheduled.request_id}")
            seq.num_generated += 1
            finish = None
            if output.eos:
                finish = FinishReason.EOS
            elif seq.num_generated >= seq.request.max_new_tokens:
                finish = FinishReason.MAX_TOKENS
            if finish is not None:
                self._release(seq)
            events.append(
                StepEvent(scheduled.request_id, output.token, seq.num_generated, finish)
            )
        return events

    # -- internals -------------------------------------------------------------------

    def _admit(self) -> list[_Seq]:
        cfg = self.config
        if (cfg.admission == Admission.STATIC and self._running) or self._resuming:
            return []  # resumed sequences waiting for a slot go first
        admitted: list[_Seq] = []
        tokens = 0
        while self._waiting and len(self._running) < cfg.max_active:
            head = self._waiting[0]
            prompt = head.request.prompt_tokens
            if len(admitted) >= cfg.max_prefills_per_step:
                break
            if admitted and tokens + prompt > cfg.max_prefill_tokens:
                break
            slot = self.allocator.allocate(prompt + head.request.max_new_tokens)
            if slot is None:
                break  # no room: the head waits, and nobody overtakes it
            self._waiting.popleft()
            head.slot, head.status = slot, SeqStatus.RUNNING
            self._running[head.request.request_id] = head
            admitted.append(head)
            tokens += prompt
        return admitted

    def _evict_aborted(self) -> tuple[ScheduledSeq, ...]:
        gone = [seq for seq in self._running.values() if seq.aborted]
        for seq in gone:
            self._release(seq)
        return tuple(seq.scheduled() for seq in gone)

    def _park_paused(self) -> tuple[ScheduledSeq, ...]:
        parked = [seq for seq in self._running.values() if seq.pausing]
        for seq in parked:
            self._release(seq)
            seq.pausing, seq.status = False, SeqStatus.PAUSED
            self._paused[seq.request.request_id] = seq
        return tuple(seq.scheduled() for seq in parked)

    def _readmit(self) -> list[_Seq]:
        """Resumed sequences back into free slots (no prefill: their cache was kept)."""
        back: list[_Seq] = []
        if self.config.admission == Admission.STATIC and self._running:
            return back
        while self._resuming and len(self._running) < self.config.max_active:
            head = self._resuming[0]
            slot = self.allocator.allocate(head.request.prompt_tokens
                                           + head.request.max_new_tokens)
            if slot is None:
                break
            self._resuming.popleft()
            head.slot, head.status = slot, SeqStatus.RUNNING
            self._running[head.request.request_id] = head
            back.append(head)
        return back

    def _release(self, seq: _Seq) -> None:
        seq.status = SeqStatus.FINISHED
        self.allocator.free(seq.slot)
        self._running.pop(seq.request.request_id, None)

    def _find(self, request_id: str) -> _Seq | None:
        seq = self._running.get(request_id) or self._paused.get(request_id)
        if seq is not None:
            return seq
        return next((s for s in (*self._resuming, *self._waiting)
                     if s.request.request_id == request_id), None)
