"""A model deployment's replica: one model's ONNX sessions and this project's batchers (or
TTS step engine), built and warmed up exactly as `python -m service` builds them.

The replica runs the model's pipeline with a `LocalSeam` whose queues and engine it looks
up by name: `submit` is one item for a batcher, `generate` and `stream` one sequence for
the engine. Engine calls are streams whose first message is `Admitted`: the engine has
taken the sequence (a full engine refuses with its 503 instead), so the ingress knows the
stream is admitted, and by whom, before its response starts. Tokens that are ready
together travel as one `Steps` message. Ray cancels a call whose caller went away at the
replica's next await; for a stream that closes the engine stream, and the sequence leaves
the batch at the next decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import ray
from ray import serve

from service.cluster.calls import (
    Admitted,
    EngineCall,
    ReplicaInfo,
    Reply,
    Steps,
    SubmitCall,
    deadline_from,
)
from service.pipelines.base import Pipeline
from service.pipelines.loader import ModelLoader
from service.runtime.admission import CpuWorkers, adopt_deadline
from service.runtime.allocator import pin_malloc_thresholds
from service.runtime.metrics import Metrics
from service.runtime.packs import load_pack
from service.seam.handoff import LocalEngine, LocalSeam
from service.settings import Settings
from service.tts.jobs import CodeStep, GenerationJob, GenerationResult

_END = object()


class ModelReplica:
    async def __init__(self, kind: str, settings: Settings) -> None:  # type: ignore[misc]
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.kind = kind
        self.replica = f"{kind}#{replica_id}"
        self.node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        if settings.pin_malloc_thresholds:  # before the pack's first large arrays
            pin_malloc_thresholds()
        self.model_metrics = Metrics()
        self.cpu = CpuWorkers(settings.cpu_threads or None)
        self.seam = LocalSeam(replica=replica_id)
        self.pipelines: dict[str, Pipeline] = {}
        pack = load_pack(settings.models_dir / kind, expected_kind=kind)
        self.loader = ModelLoader([pack], settings, self.model_metrics, self.pipelines, self.cpu,
                                  self.seam)
        await self.loader.run()
        self.pipeline = self.pipelines[kind]

    # -- the seam's calls ---------------------------------------------------------------

    async def submit(self, call: SubmitCall) -> Reply:
        queue = self.seam.queues[call.queue]
        value = await queue.submit(call.item, length=call.length, timeout_s=call.timeout_s,
                                   deadline=deadline_from(call.budget_s))
        return Reply(self.replica, value)

    async def generate(self, call: EngineCall) -> AsyncIterator[Any]:
        """`Admitted`, then the sequence's `GenerationResult`."""
        engine = self._engine(call)
        task = asyncio.ensure_future(engine.generate(self._job(call)))
        try:
            await self._admitted(task)
            yield Admitted(self.replica)
            yield await task
        finally:
            await _cancelled(task)

    async def stream(self, call: EngineCall) -> AsyncIterator[Any]:
        """`Admitted`, then `Steps` of the tokens ready since the last message, the last
        one ending with the `GenerationResult`."""
        engine = self._engine(call)
        ready: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async with contextlib.aclosing(engine.stream(self._job(call))) as events:
                    async for event in events:
                        ready.put_nowait(event)
                ready.put_nowait(_END)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the reader, who raises it
                ready.put_nowait(exc)

        task = asyncio.ensure_future(pump())
        try:
            await self._admitted(task)
            yield Admitted(self.replica)
            while True:
                batch: list[CodeStep | GenerationResult] = []
                item = await ready.get()
                while True:
                    if item is _END:
                        if batch:
                            yield Steps(tuple(batch))
                        return
                    if isinstance(item, BaseException):
                        raise item
                    batch.append(item)
                    if ready.empty():
                        break
                    item = ready.get_nowait()
                yield Steps(tuple(batch))
        finally:
            await _cancelled(task)

    def _engine(self, call: EngineCall) -> LocalEngine:
        adopt_deadline(deadline_from(call.budget_s))
        engine = next(iter(self.seam.engines.values()))
        engine.check_capacity(1)
        return engine

    @staticmethod
    def _job(call: EngineCall) -> GenerationJob:
        """The job with its start deadline on this replica's clock."""
        if not call.start_by:
            return call.job
        return replace(call.job, start_by=deadline_from(call.budget_s))

    @staticmethod
    async def _admitted(task: asyncio.Future[Any]) -> None:
        """Let the task take its first step, where the engine admits or refuses."""
        await asyncio.sleep(0)
        if task.done():
            task.result()  # a refusal (503) or a bad job: raised before `Admitted`

    # -- health, description, metrics -----------------------------------------------------

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose batcher or engine died is restarted."""
        if not self.pipeline.healthy:
            raise RuntimeError(f"{self.replica}: a batcher or engine stopped")

    async def describe(self) -> ReplicaInfo:
        model = self.pipeline.info()
        model["queues"] = {name: q.describe() for name, q in self.seam.queues.items()}
        engine = None
        for e in self.seam.engines.values():
            step = e.config.step
            engine = {"running": e.scheduler.num_running, "waiting": e.scheduler.num_waiting,
                      "paused": e.scheduler.num_paused,
                      "max_active": step.max_active, "max_waiting": e.config.max_waiting,
                      "aborted": e.stats().aborted}
        return ReplicaInfo(self.replica, self.node, os.getpid(), self.pipeline.healthy,
                           model, engine)

    async def metrics(self) -> tuple[str, list[Any]]:
        return self.replica, list(self.model_metrics.registry.collect())

    async def __del__(self) -> None:
        await self.loader.close()
        self.cpu.shutdown()


async def _cancelled(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task
