"""What crosses the engine's boundary: jobs, results, statistics, and a sequence in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from batcher.steps import FinishReason
from service.tts.sampling import SamplingParams


class PassKind(Enum):
    CODE = "code"
    """Audio tokens: 4 codebooks per step, stops when any samples the audio EOS."""
    TEXT = "text"
    """Refine pass: text ids from `head_text`, stops at `[Ebreak]`."""


@dataclass(frozen=True)
class GenerationJob:
    request_id: str
    kind: PassKind
    prompt_ids: np.ndarray
    """int64 [T]."""
    spk_emb: np.ndarray | None
    """float32 [spk_emb_dim], or None (the prompt then has no `[spk_emb]`)."""
    params: SamplingParams
    max_new_tokens: int
    seed: int
    start_by: float | None = None
    """`time.monotonic()` by which it must have a decoding slot; later it fails with
    `DeadlineExceeded` and never runs (None: it waits as long as it takes)."""


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    tokens: np.ndarray
    """CODE: int64 [N, 4]; TEXT: int64 [N]. The EOS token is not included."""
    hidden: np.ndarray | None
    """CODE: float32 [N, H], the hidden state that predicted each token."""
    finish: FinishReason
    queued_s: float
    generate_s: float


@dataclass(frozen=True)
class CodeStep:
    """One audio token as soon as it is sampled (streaming); EOS tokens are never sent."""

    token: np.ndarray
    """int64 [num_vq]."""
    hidden: np.ndarray
    """float32 [H], the hidden state that predicted it (what the decoder needs)."""


@dataclass(frozen=True)
class EngineStats:
    steps: int
    decode_steps: int
    decode_rows: int
    decode_s: float
    prefill_s: float
    cache_copies: int
    cache_step_s: float
    """KV-cache data moved outside the graph in decode steps (0 for the default cache)."""
    cache_membership_s: float
    """KV-cache data moved when rows join or leave."""
    aborted: int = 0
    """Sequences aborted (cancelled callers, disconnected clients)."""
    paused: int = 0
    """Pauses granted to streams whose readers fell behind."""
    expired: int = 0
    """Sequences that got no slot before their `start_by` (never run)."""


NO_TOKEN = -1
"""An empty place in a sequence's penalty window (`LiveSequence.history`)."""


@dataclass(eq=False)
class LiveSequence:
    """Engine-thread state of one sequence; its future belongs to the caller's loop."""

    job: GenerationJob
    future: asyncio.Future[GenerationResult]
    loop: asyncio.AbstractEventLoop
    submitted_at: float
    rng: np.random.Generator
    tokens: list[np.ndarray] = field(default_factory=list)
    hiddens: list[np.ndarray] = field(default_factory=list)
    admitted_at: float = 0.0
    on_token: Callable[[CodeStep], None] | None = None
    """Called on `loop` for each kept audio token (streaming requests); the engine batches
    a step's calls into one cross-thread wake-up per loop."""

    @property
    def prompt_len(self) -> int:
        return int(self.job.prompt_ids.shape[0])

    def __post_init__(self) -> None:
        rows = 4 if self.job.kind == PassKind.CODE else 1
        self._recent = np.full((rows, self.job.params.window), NO_TOKEN, np.int64)

    def add_token(self, ids: np.ndarray) -> None:
        """A sampled token (one id per codebook row): kept, and in the penalty's window."""
        self._recent[:, len(self.tokens) % self._recent.shape[1]] = ids
        self.tokens.append(ids)

    def history(self) -> np.ndarray:
        """The ids the repetition penalty looks at: [rows, window], 4 codebook rows (CODE)
        or 1 (TEXT), the last `window` tokens in ring order (the penalty counts them,
        order does not matter), NO_TOKEN where fewer were sampled. Kept as tokens come,
        not stacked from the list every step (that was 16 us a row per step)."""
        return self._recent

    def resolve(self, result: GenerationResult | None, error: BaseException | None) -> None:
        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        self._call(_set)

    def cancel(self) -> None:
        self._call(self.future.cancel)

    def _call(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(fn)
