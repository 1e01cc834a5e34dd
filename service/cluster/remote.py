"""The Ray side of the seam (`service.seam.handoff`): batcher queues and the TTS engine behind a
model deployment's handle, as the ingress's pipelines call them.

Design note. Every call is bounded, so nothing waits forever for a replica that is gone:
a batcher item by its deadline (or its queue's timeout, or the service's deadline) plus
`result_grace_s` for a batch that started just in time; an engine call by the same bound
until the replica says `Admitted`, and then for as long as the sequence decodes, as in one
process. Faults become this service's errors, never a 500 or a hang: Ray's back-pressure
(`max_queued_requests`) -> `Overloaded` (503 + Retry-After, ray#51145 turned it into a 500
when it crossed a FastAPI ingress untranslated), a replica that died, restarts or is not up
-> `ReplicaUnavailable` (503), the bound passed -> `DeadlineExceeded` (504); what the
replica raised itself (its batcher's own 503/504, an invalid input) is raised again here.
Cancelling a call (a client that went away) cancels it in the replica: Ray delivers that at
the replica's next await, which for an engine stream is its next decoding step.

Readiness and /v1/models come from a poll of every replica (`broadcast("describe")`,
`health_interval_s`); a failed call wakes the poll at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from batcher import BatchConfig, BatchObserver, DeadlineExceeded, Overloaded
from service.cluster.calls import (
    Admitted,
    EngineCall,
    ReplicaInfo,
    Reply,
    Steps,
    SubmitCall,
    budget,
)
from service.cluster.metrics import exposition
from service.errors import ApiError
from service.runtime.admission import request_deadline
from service.seam import replicas
from service.seam.handoff import ModelFacts, no_announcements
from service.tts.engine import EngineConfig
from service.tts.jobs import CodeStep, GenerationJob, GenerationResult
from service.tts.model import TTSGraphs

log = logging.getLogger("audioserve.cluster")

T = TypeVar("T")
R = TypeVar("R")

_GONE = (ray_errors.RayActorError, ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
         ray_errors.ObjectLostError, ray_errors.LocalRayletDiedError,
         serve_errors.DeploymentUnavailableError)


class ReplicaUnavailable(ApiError):
    """No replica of the model could answer: it died, restarts, or is not up yet."""

    status, code = 503, "replica_unavailable"


@dataclass(frozen=True)
class SeamOptions:
    result_grace_s: float = 2.0
    """A batch that started just before the deadline gets this long to come back."""
    call_timeout_s: float = 30.0
    """Bound of a call with no deadline of its own (the service's request deadline)."""
    health_interval_s: float = 1.0
    attach_timeout_s: float = 900.0
    """How long the ingress waits, at start, for a model deployment's first replica."""


def translate(exc: BaseException, kind: str) -> BaseException:
    """A Ray error as this service's error (see the design note)."""
    if isinstance(exc, ray_errors.RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException) and not isinstance(cause, ray_errors.RayError):
            return cause  # the replica's own error, e.g. its batcher's Overloaded
        exc = cause if isinstance(cause, BaseException) else exc
    if isinstance(exc, serve_errors.BackPressureError):
        return Overloaded(f"{kind}: every replica is busy and its queue is full ({exc})",
                          retry_after_s=exc.retry_after_s or 1.0)
    if isinstance(exc, _GONE):
        return ReplicaUnavailable(
            f"{kind}: the model replica is unavailable ({type(exc).__name__}); it is being "
            "restarted, retry shortly", headers={"Retry-After": "1"})
    return exc


class ModelClient:
    """One model deployment as the ingress sees it: its handle and its replicas' health."""

    def __init__(self, kind: str, handle: DeploymentHandle, options: SeamOptions) -> None:
        self.kind = kind
        self.handle = handle
        self.options = options
        self.infos: list[ReplicaInfo] = []
        self._methods: dict[tuple[str, bool], DeploymentHandle] = {}
        self._poll_now = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return any(info.healthy for info in self.infos)

    def first(self) -> ReplicaInfo | None:
        return next((i for i in self.infos if i.healthy), self.infos[0] if self.infos else None)

    async def attach(self) -> ModelFacts:
        """Wait for the first replica (it loads and warms up its packs), then poll."""
        deadline = time.monotonic() + self.options.attach_timeout_s
        while True:
            try:
                info: ReplicaInfo = await asyncio.wait_for(
                    self.handle.describe.remote(), self.options.health_interval_s * 30)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind}: no replica answered within "
                                       f"{self.options.attach_timeout_s:g} s: {exc}") from exc
                await asyncio.sleep(self.options.health_interval_s)
        self.infos = [info]
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
        return ModelFacts(provider=str(info.model["provider"]),
                          precision=str(info.model["precision"]))

    async def describe_all(self) -> list[ReplicaInfo]:
        """Every replica's own description; one that does not answer counts as unhealthy."""
        results = await self.handle.broadcast("describe").results_async(
            timeout_s=self.options.health_interval_s * 5, return_exceptions=True)
        infos = [r for r in results if isinstance(r, ReplicaInfo)]
        failed = len(results) - len(infos)
        if failed:
            log.warning("%s: %d of %d replicas did not answer", self.kind, failed, len(results))
        return sorted(infos, key=lambda i: i.replica)

    async def _poll_loop(self) -> None:
        while True:
            try:
                self.infos = await self.describe_all()
            except Exception as exc:
                log.warning("%s: health poll failed: %s", self.kind, exc)
                self.infos = []
            self._poll_now.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self.options.health_interval_s)

    def suspect(self) -> None:
        """A call failed in a way that may mean a replica is gone: poll now."""
        self._poll_now.set()

    def _method(self, name: str, stream: bool = False) -> DeploymentHandle:
        """A handle per method, made once (`handle.<method>` copies the handle each time).

        The transport is gRPC (Serve's fast path, `_by_reference=False`) whatever process
        made the handle: its default is fixed when that process imported Ray Serve."""
        handle = self._methods.get((name, stream))
        if handle is None:
            handle = self._methods[name, stream] = self.handle.options(
                method_name=name, stream=stream, _by_reference=False)
        return handle

    async def call(self, method: str, arg: object, bound_s: float) -> Any:
        """One unary call, bounded and translated (see the design note)."""
        response = self._method(method).remote(arg)
        try:
            async with asyncio.timeout(bound_s):
                return await response
        except TimeoutError:
            response.cancel()
            raise DeadlineExceeded(f"{self.kind}: no answer within {bound_s:.1f} s") from None
        except asyncio.CancelledError:
            response.cancel()  # a caller that went away: the replica stops too
            raise
        except Exception as exc:
            raise self._fault(exc) from None

    def open(self, method: str, arg: object) -> DeploymentResponseGenerator[Any]:
        stream = self._method(method, stream=True).remote(arg)
        assert isinstance(stream, DeploymentResponseGenerator)
        return stream

    async def next(self, stream: DeploymentResponseGenerator[Any],
                   bound_s: float | None = None) -> Any:
        """The stream's next message; StopAsyncIteration at its end."""
        try:
            async with asyncio.timeout(bound_s):
                return await stream.__anext__()
        except (StopAsyncIteration, asyncio.CancelledError):
            raise
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.kind}: not admitted within {bound_s:.1f} s") from None
        except Exception as exc:
            raise self._fault(exc) from None

    def _fault(self, exc: BaseException) -> BaseException:
        translated = translate(exc, self.kind)
        if isinstance(translated, ReplicaUnavailable):
            self.suspect()
        return translated

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None


class RemoteQueue(Generic[T, R]):
    """A batcher queue in the model replicas (`service.seam.handoff.BatchQueue`)."""

    def __init__(self, client: ModelClient, name: str, config: BatchConfig) -> None:
        self.client = client
        self.name = name
        self.config = config

    @property
    def running(self) -> bool:
        return self.client.ready

    def start(self) -> None:
        """The replicas started their batchers."""

    def expecting(self) -> AbstractContextManager[None]:
        return no_announcements()

    async def submit(self, item: T, *, length: int = 0, timeout_s: float | None = -1.0,
                     deadline: float | None = None) -> R:
        left = budget(deadline)
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{self.name}: the request's deadline passed")
        own = self.config.timeout_s if timeout_s == -1.0 else timeout_s
        limits = [x for x in (left, own) if x is not None] or [self.client.options.call_timeout_s]
        call = SubmitCall(self.name, item, length, timeout_s, left)
        reply: Reply = await self.client.call("submit", call,
                                              min(limits) + self.client.options.result_grace_s)
        replicas.note(reply.replica)
        value: R = reply.value
        return value

    async def calibrate(self, item: T, *, length: int = 0) -> dict[int, float]:
        """Each replica calibrated its own batcher when it started (see /v1/models)."""
        return {}

    def describe(self) -> dict[str, object]:
        info = self.client.first()
        described: dict[str, object] = dict(info.model.get("queues", {}).get(self.name, {})
                                            if info else {})
        described["replicas"] = sum(1 for i in self.client.infos if i.healthy)
        return described

    async def close(self) -> None:
        """The replicas drain their own batchers when they stop."""


class RemoteEngine:
    """The TTS step engine in the model replicas (`service.seam.handoff.TokenEngine`).

    Admission is the replicas' own: a stream's pieces are admitted (or refused, 503) as
    each is opened, the first before the response starts (`open_stream` waits for it),
    so `reserve` / `release` hold nothing here beyond checking that a replica is up.
    Flow control is in-process only: across the handle a replica's sequence is not paused
    for a slow reader; the response's stall timeout (`TTS_STREAM_STALL_TIMEOUT_S`) ends
    it, which cancels the call and aborts the sequence in its replica."""

    def __init__(self, client: ModelClient, config: EngineConfig, name: str) -> None:
        self.client = client
        self.config = config
        self.name = name
        self._open_streams: set[RemoteTokenStream] = set()

    @property
    def healthy(self) -> bool:
        return self.client.ready

    def start(self) -> None:
        """The replicas started their engines."""

    async def stop(self) -> None:
        for stream in list(self._open_streams):
            stream.close()

    def check_capacity(self, sequences: int = 1) -> None:
        """Admission is the replicas' own (their engines refuse with 503); here only
        whether any replica is up."""
        if not self.client.ready:
            raise ReplicaUnavailable(f"{self.name}: no model replica is ready",
                                     headers={"Retry-After": "1"})

    def reserve(self, sequences: int) -> None:
        self.check_capacity(sequences)

    def release(self) -> None:
        """Nothing is held here (see the class note)."""

    async def _open(self, method: str, job: GenerationJob) -> DeploymentResponseGenerator[Any]:
        """The call, once its replica admitted it. The job's start deadline and the
        request's deadline travel as seconds left: the replica's clock is its own."""
        options = self.client.options
        left = budget(job.start_by if job.start_by is not None else request_deadline())
        call = EngineCall(replace(job, start_by=None), left, start_by=job.start_by is not None)
        stream = self.client.open(method, call)
        bound = (left if left is not None else options.call_timeout_s) + options.result_grace_s
        try:
            first = await self.client.next(stream, bound)
        except BaseException:
            stream.cancel()
            raise
        if not isinstance(first, Admitted):
            stream.cancel()
            raise RuntimeError(f"{self.name}: expected Admitted, got {type(first).__name__}")
        replicas.note(first.replica)
        return stream

    def open_stream(self, job: GenerationJob, max_buffered: int | None = None, *,
                    reserved: bool = False) -> RemoteTokenStream:
        stream = RemoteTokenStream(self, job)
        self._open_streams.add(stream)
        return stream

    async def generate(self, job: GenerationJob) -> GenerationResult:
        stream = await self._open("generate", job)
        done = False
        try:
            message = await self.client.next(stream)
            done = True
        finally:
            if not done:
                stream.cancel()
        result: GenerationResult = message
        return result

    async def stream(self, job: GenerationJob
                     ) -> AsyncGenerator[CodeStep | GenerationResult, None]:
        async with contextlib.aclosing(self.open_stream(job)) as tokens:
            async for event in tokens:
                yield event


class RemoteTokenStream:
    """One streamed sequence in a model replica (`service.seam.handoff.SequenceStream`): opened at
    once, its events read in the batches (`Steps`) the replica sends."""

    def __init__(self, engine: RemoteEngine, job: GenerationJob) -> None:
        self._engine = engine
        self._opening = asyncio.ensure_future(engine._open("stream", job))
        self._stream: DeploymentResponseGenerator[Any] | None = None
        self._events: deque[CodeStep | GenerationResult] = deque()
        self._ended = False

    async def _fill(self) -> bool:
        """Fetch the next batch of events; False at the end of the call."""
        if self._stream is None:
            self._stream = await self._opening
        try:
            message = await self._engine.client.next(self._stream)
        except StopAsyncIteration:
            self._ended = True
            self.close()
            return False
        assert isinstance(message, Steps)
        self._events.extend(message.events)
        return True

    async def started(self) -> None:
        if not self._events and not self._ended:
            await self._fill()

    def __aiter__(self) -> RemoteTokenStream:
        return self

    async def __anext__(self) -> CodeStep | GenerationResult:
        while not self._events:
            if self._ended or not await self._fill():
                raise StopAsyncIteration
        return self._events.popleft()

    def close(self) -> None:
        """Cancel the call (the replica aborts the sequence); never suspends."""
        self._engine._open_streams.discard(self)
        if self._ended:
            return
        self._ended = True
        if not self._opening.done():
            self._opening.cancel()  # `_open` cancels the call it opened
        elif not self._opening.cancelled() and self._opening.exception() is None:
            self._opening.result().cancel()

    async def aclose(self) -> None:
        self.close()


class RaySeam:
    """The ingress's seam: every model through its deployment's handle."""

    runs_models = False

    def __init__(self, handles: Mapping[str, DeploymentHandle], options: SeamOptions,
                 replica: str = "ingress", peers: Callable[[], DeploymentHandle] | None = None
                 ) -> None:
        self.options = options
        self.replica = replica
        self.clients = {kind: ModelClient(kind, h, options) for kind, h in handles.items()}
        self._peers = peers

    def _client(self, kind: str) -> ModelClient:
        client = self.clients.get(kind)
        if client is None:
            raise RuntimeError(f"no {kind} deployment in this application "
                               f"(deployed: {', '.join(sorted(self.clients)) or 'none'})")
        return client

    async def attach(self, kind: str) -> ModelFacts | None:
        return await self._client(kind).attach()

    def queue(self, kind: str, name: str, batch_fn: Callable[[list[Any]], Sequence[Any]],
              config: BatchConfig, observer: BatchObserver | None) -> RemoteQueue[Any, Any]:
        return RemoteQueue(self._client(kind), name, config)

    def engine(self, kind: str, graphs: TTSGraphs | None, config: EngineConfig, *, name: str,
               observer: BatchObserver | None) -> RemoteEngine:
        return RemoteEngine(self._client(kind), config, name)

    async def replicas(self, kind: str) -> list[dict[str, Any]]:
        client = self._client(kind)
        client.infos = await client.describe_all()
        return [info.public() for info in client.infos]

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        """This ingress's metrics and every model replica's (and every other ingress
        replica's, when `peers` is given), each sample labelled with its replica."""
        sources: list[tuple[str, list[Any]]] = [(self.replica, list(registry.collect()))]
        calls: list[Any] = [c.handle.broadcast("metrics") for c in self.clients.values()]
        if self._peers is not None:
            calls.append(self._peers().broadcast("replica_metrics"))
        for call in calls:
            results = await call.results_async(timeout_s=self.options.health_interval_s * 5,
                                               return_exceptions=True)
            sources += [r for r in results if isinstance(r, tuple) and r[0] != self.replica]
        return exposition(sources)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
