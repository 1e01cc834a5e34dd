"""What crosses the seam between the ingress and a model replica: small frozen records.

Items and results travel as the batcher's own types (numpy arrays, frozen dataclasses).
A deadline travels as the seconds left when the call was sent (`budget_s`): monotonic
clocks of two processes, let alone two machines, do not agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from service.tts.jobs import CodeStep, GenerationJob, GenerationResult


def budget(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (`time.monotonic()`), or None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()


def deadline_from(budget_s: float | None) -> float | None:
    """The local deadline a budget stands for, on the receiving side."""
    return None if budget_s is None else time.monotonic() + budget_s


@dataclass(frozen=True)
class SubmitCall:
    """One item for the batcher named `queue` in the replica."""

    queue: str
    item: Any
    length: int
    timeout_s: float | None
    """The batcher's own per-item timeout: -1 for its config's, None for none."""
    budget_s: float | None


@dataclass(frozen=True)
class EngineCall:
    """One sequence for the replica's TTS engine."""

    job: GenerationJob
    budget_s: float | None
    start_by: bool = False
    """The sequence must get its slot within `budget_s` (the job's start deadline, sent
    as seconds left; the replica sets `job.start_by` on its own clock)."""


@dataclass(frozen=True)
class Reply:
    replica: str
    """`<deployment>#<replica id>`: what `X-Audioserve-Replica` names."""
    value: Any


@dataclass(frozen=True)
class Admitted:
    """First event of an engine call: the replica's engine took the sequence."""

    replica: str


@dataclass(frozen=True)
class Steps:
    """Engine events that were ready together (one Ray message for several tokens)."""

    events: tuple[CodeStep | GenerationResult, ...]


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica as it describes itself (health polls, /v1/models, sizing)."""

    replica: str
    node: str
    pid: int
    healthy: bool
    model: dict[str, Any]
    """The pipeline's `info()`: precision, provider, batching and its per-batch costs."""
    engine: dict[str, Any] | None = None
    """TTS only: sequences active and waiting, capacity, aborted so far."""

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.replica, "node": self.node, "pid": self.pid,
                                "healthy": self.healthy,
                                "batching": self.model.get("batching")}
        if self.engine is not None:
            body["engine"] = self.engine
        return body
