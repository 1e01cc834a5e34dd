"""The seam: where a pipeline hands work to its batcher or to the TTS engine.

Design note. A pipeline never builds a `DynamicBatcher` or a `GenerationEngine` itself; it
asks the `Seam` in its `LoadContext` for a `BatchQueue` (submit an item, await its result)
or a `TokenEngine` (generate, or stream, audio tokens). In one process (`LocalSeam`) they
are the batcher and the engine themselves. On a Ray cluster (`service.cluster.remote`) the
same calls go through the model deployment's handle to the batcher or engine inside a
model replica, while the pipeline's CPU work (decode, features, tokenising, encoding)
stays where the route runs. Pipelines and routes have one code path and do not know which
side they are on; the answers are the same either way.

What crosses the seam is the batcher's own item and result types (numpy arrays, frozen
dataclasses) and, on the cluster, the request's deadline as seconds left (clocks of two
machines differ) and the name of the replica that answered, which the response carries
(`service.seam.replicas`). A seam that does not run models here (`runs_models` False) tells
`load()` not to open any ONNX session: the model replicas own them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from batcher import BatchConfig, BatchObserver, CoreGate, DynamicBatcher
from service.seam import replicas
from service.tts.engine import EngineConfig, GenerationEngine
from service.tts.jobs import CodeStep, GenerationJob, GenerationResult
from service.tts.model import TTSGraphs
from service.tts.token_stream import TokenStream

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

LOCAL = "local"


class BatchQueue(Protocol[T_contra, R_co]):
    """One model queue as a pipeline sees it (`DynamicBatcher`'s calling side)."""

    name: str

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def expecting(self) -> AbstractContextManager[None]: ...

    async def submit(self, item: T_contra, *, length: int = 0, timeout_s: float | None = -1.0,
                     deadline: float | None = None) -> R_co: ...

    async def calibrate(self, item: T_contra, *, length: int = 0) -> dict[int, float]: ...

    def describe(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


class TokenEngine(Protocol):
    """The TTS step engine as a pipeline sees it (`GenerationEngine`'s calling side)."""

    config: EngineConfig

    @property
    def healthy(self) -> bool: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def check_capacity(self, sequences: int = 1) -> None: ...

    def reserve(self, sequences: int) -> None:
        """Hold places for a stream's sequences before its response starts (503 here,
        never in the middle of the audio); `open_stream(..., reserved=True)` uses one."""

    def release(self) -> None:
        """Give back one reserved place that was never used."""

    def open_stream(self, job: GenerationJob, max_buffered: int | None = None, *,
                    reserved: bool = False) -> SequenceStream:
        """Start one streamed sequence (flow-controlled by `max_buffered` unread tokens)."""

    async def generate(self, job: GenerationJob) -> GenerationResult: ...

    def stream(self, job: GenerationJob) -> AsyncGenerator[CodeStep | GenerationResult, None]:
        ...


class SequenceStream(Protocol):
    """A streamed sequence as the pipeline reads it (`service.tts.token_stream`)."""

    async def started(self) -> None:
        """Return once its first token is there; raise if it was refused or expired."""

    def __aiter__(self) -> SequenceStream: ...

    async def __anext__(self) -> CodeStep | GenerationResult: ...

    def close(self) -> None:
        """Stop: abort the sequence if it still runs (never suspends)."""


@dataclass(frozen=True)
class ModelFacts:
    """What the process that runs a model chose for it, for a pipeline built elsewhere."""

    provider: str
    precision: str


class Seam(Protocol):
    runs_models: bool
    """False: the ONNX sessions and batchers live in model replicas, not here."""

    async def attach(self, kind: str) -> ModelFacts | None:
        """Before loading `kind`: None in one process; on a cluster, wait until the
        model's deployment answers and say what it runs."""

    def queue(self, kind: str, name: str, batch_fn: Callable[[list[Any]], Sequence[Any]],
              config: BatchConfig, observer: BatchObserver | None) -> BatchQueue[Any, Any]: ...

    def engine(self, kind: str, graphs: TTSGraphs | None, config: EngineConfig, *, name: str,
               observer: BatchObserver | None) -> TokenEngine: ...

    async def replicas(self, kind: str) -> list[dict[str, Any]]:
        """The replicas serving `kind`, for GET /v1/models."""

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        """The Prometheus exposition for GET /metrics: `registry`'s, and on a cluster every
        replica's as well."""

    async def close(self) -> None:
        """At shutdown, after the pipelines stopped."""


class LocalQueue(DynamicBatcher[T, R]):
    """The batcher itself; each submit notes this process as the replica that answered."""

    def __init__(self, replica: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replica = replica

    async def submit(self, item: T, *, length: int = 0, timeout_s: float | None = -1.0,
                     deadline: float | None = None) -> R:
        replicas.note(self.replica)
        return await super().submit(item, length=length, timeout_s=timeout_s,
                                    deadline=deadline)


class LocalEngine(GenerationEngine):
    """The engine itself; calls note this process as the replica that answered."""

    def __init__(self, replica: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replica = replica

    def open_stream(self, job: GenerationJob, max_buffered: int | None = None, *,
                    reserved: bool = False) -> TokenStream:
        replicas.note(self.replica)
        return super().open_stream(job, max_buffered, reserved=reserved)

    async def generate(self, job: GenerationJob) -> GenerationResult:
        replicas.note(self.replica)
        return await super().generate(job)

    def stream(self, job: GenerationJob) -> AsyncGenerator[CodeStep | GenerationResult, None]:
        replicas.note(self.replica)
        return super().stream(job)


class LocalSeam:
    """Everything in this process: `python -m service`, and inside each model replica."""

    runs_models = True

    def __init__(self, replica: str = LOCAL) -> None:
        self.replica = replica
        self.queues: dict[str, LocalQueue[Any, Any]] = {}
        self.engines: dict[str, LocalEngine] = {}
        self.core_gate: CoreGate | None = None
        """One for every queue of this process whose batches share the CPU cores."""

    async def attach(self, kind: str) -> ModelFacts | None:
        return None

    def queue(self, kind: str, name: str, batch_fn: Callable[[list[Any]], Sequence[Any]],
              config: BatchConfig, observer: BatchObserver | None) -> LocalQueue[Any, Any]:
        gate = None
        if config.core_slots:
            if self.core_gate is None:
                self.core_gate = CoreGate(config.core_slots)
            elif self.core_gate.slots != config.core_slots:
                raise ValueError(f"{name}: {config.core_slots} core slots where this "
                                 f"process's gate has {self.core_gate.slots}")
            gate = self.core_gate
        queue: LocalQueue[Any, Any] = LocalQueue(f"{kind}#{self.replica}", batch_fn, config,
                                                 name=name, observer=observer, gate=gate)
        self.queues[name] = queue
        return queue

    def engine(self, kind: str, graphs: TTSGraphs | None, config: EngineConfig, *, name: str,
               observer: BatchObserver | None) -> LocalEngine:
        if graphs is None:
            raise ValueError("a local engine needs the pack's opened graphs")
        engine = LocalEngine(f"{kind}#{self.replica}", graphs, config, name=name,
                             observer=observer)
        self.engines[name] = engine
        return engine

    async def replicas(self, kind: str) -> list[dict[str, Any]]:
        return [{"id": f"{kind}#{self.replica}", "healthy": True}]

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        return generate_latest(registry)

    async def close(self) -> None:
        """The pipelines closed their own batchers and engines."""


@contextlib.contextmanager
def no_announcements() -> Iterator[None]:
    """`expecting()` where the batcher is in another process: an announcement would cost
    a round trip per upload; the replica's batcher cuts what is queued instead."""
    yield
