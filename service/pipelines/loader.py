"""Finding, loading and starting the model pipelines named by the settings."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from service.errors import PackError
from service.pipelines.base import LoadContext, Pipeline
from service.runtime.admission import CpuWorkers
from service.runtime.metrics import Metrics
from service.runtime.packs import MANIFEST, ModelPack, load_pack
from service.runtime.sessions import RuntimeConfig, resolve_provider
from service.seam.handoff import LocalSeam, ModelFacts, Seam
from service.settings import MODEL_NAMES, Settings

log = logging.getLogger("audioserve.models")

PIPELINE_CLASSES = {
    "clap": "service.pipelines.clap:ClapPipeline",
    "emotion2vec": "service.pipelines.emotion2vec:Emotion2vecPipeline",
    "chattts": "service.pipelines.chattts:ChatTTSPipeline",
}


def packs_to_load(settings: Settings) -> list[ModelPack]:
    """Validate the packs to serve (cheap: manifests and file presence) so that a missing
    or broken one fails start-up naming the file. `auto`: every model folder present, and
    at least one (a mistyped folder must not give a server that is ready with no model);
    else exactly the named ones, which must exist; `none`: no pack, on purpose."""
    root = settings.models_dir
    wanted = settings.wanted_models()
    if wanted is None:
        wanted = [k for k in MODEL_NAMES if (root / k).is_dir()]
        missing = [k for k in MODEL_NAMES if k not in wanted]
        log.info("model packs in %s: found %s%s", root.resolve(), ", ".join(wanted) or "none",
                 f"; not found: {', '.join(missing)}" if missing else "")
        if not wanted:
            where = "does not exist" if not root.is_dir() else (
                f"holds none of {', '.join(k + '/' for k in MODEL_NAMES)}")
            raise PackError(
                f"no model packs: {root.resolve()} (AUDIOSERVE_MODELS_DIR) {where}; point "
                f"AUDIOSERVE_MODELS_DIR at your packs, build the demo ones with `python -m "
                f"export demo --models-dir {root}`, or set AUDIOSERVE_MODELS=none to serve "
                "no model")
    else:
        log.info("model packs in %s: serving %s (AUDIOSERVE_MODELS)", root.resolve(),
                 ", ".join(wanted) or "none")
    return [load_pack(root / kind, expected_kind=kind) for kind in wanted]


def resolve_precision(wanted: str, pack: ModelPack, provider: str) -> str:
    """`auto` is fp16 on CUDA (when the pack has it) and fp32 otherwise."""
    available = pack.common_precisions()
    if wanted == "auto":
        wanted = "fp16" if provider == "cuda" and "fp16" in available else "fp32"
    if wanted not in available:
        raise PackError(
            f"{pack.root / MANIFEST}: precision {wanted} asked for, the pack has "
            f"{', '.join(available) or 'none'} (build variants with `python -m quant`)"
        )
    return wanted


def _pipeline_class(kind: str) -> Any:
    module_name, class_name = PIPELINE_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def cpu_cores() -> int:
    """Cores this process may use (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallelism(settings: Settings, provider: str, concurrent: bool) -> tuple[int, int]:
    """(batch workers, ORT intra-op threads per session) for one model.

    On CUDA one worker feeds the GPU's stream. On CPU two workers with half the cores each
    keep the cores busier than one batch on all of them (ORT's intra-op parallelism leaves
    cores idle in the many small ops between the large ones).
    """
    cores = cpu_cores()
    workers = settings.batch_workers or (2 if provider == "cpu" and cores >= 2 else 1)
    if not concurrent:
        workers = 1
    threads = settings.intra_op_threads
    if provider == "cpu" and threads == 0 and workers > 1:
        threads = max(1, cores // workers)
    return workers, threads


def load_pipeline(
    pack: ModelPack, settings: Settings, metrics: Metrics, cpu: CpuWorkers,
    seam: Seam | None = None, facts: ModelFacts | None = None, provider: str | None = None,
) -> tuple[Pipeline, str]:
    """The pipeline and a line saying what was loaded (logged by the caller, so a load that
    ends after shutdown began says nothing). `facts`: the provider and precision chosen
    where the model runs, when that is not this process (a cluster's ingress); `provider`:
    the one resolved for this process."""
    if facts:
        provider = facts.provider
    elif provider is None:
        provider = resolve_provider(settings.provider)
    cls = _pipeline_class(pack.kind)
    workers, threads = parallelism(settings, provider, cls.concurrent_batches)
    core_slots = 0  # on CPU the models' batches share the cores through one gate
    if provider == "cpu" and settings.cpu_core_gate:  # a slot per batch's threads (0: all)
        core_slots = max(1, cpu_cores() // threads) if threads else 1
    runtime = RuntimeConfig(
        provider=provider,
        device_id=settings.cuda_device_id,
        intra_op_threads=threads,
        intra_op_spinning=settings.intra_op_spinning,
        cpu_arena=settings.cpu_arena,
    )
    precision = (facts.precision if facts else
                 resolve_precision(settings.precision_for(pack.kind), pack, provider))
    context = LoadContext(
        settings=settings, runtime=runtime, precision=precision, metrics=metrics,
        batch=settings.batch_config(
            workers=workers,
            # one ORT thread per worker computes on the worker's own thread: its CPU time is
            # the batch's cost; otherwise (pools, a GPU) the wall time is
            cost_clock="thread_cpu" if provider == "cpu" and threads == 1 else "wall",
            core_slots=core_slots,
        ),
        cpu=cpu,
        seam=seam or LocalSeam(),
    )
    dependent = [g for g, v in pack.manifest.graphs.items()
                 if precision in v and not v[precision].batch_invariant]
    if dependent:
        log.warning("%s at %s: graphs %s are NOT batch-invariant (a result may depend on its "
                    "batch-mates); choose another precision for exact answers",
                    pack.kind, precision, ", ".join(dependent))
    pipeline: Pipeline = cls.load(pack, context)
    source = "DEMO pack (random weights)" if pack.manifest.demo else pack.manifest.source
    return pipeline, (f"loaded {pack.kind} from {pack.root}: {source}, {precision} on "
                      f"{provider} ({workers} batch worker(s), {threads or 'all'} intra-op "
                      "threads)")


def describe(pipeline: Pipeline) -> str:
    """`clap (demo, fp32, cpu)`: what a start-up log says of a loaded model."""
    info = pipeline.info()
    demo = "demo, " if info.get("demo") else ""
    return f"{info.get('id', '?')} ({demo}{info.get('precision')}, {info.get('provider')})"


class LoadState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LoaderStatus:
    state: LoadState
    models: list[str]
    expected: list[str]
    """The models this server was asked to serve: ready means every one of them."""
    unhealthy: list[str]
    error: str | None

    @property
    def ready(self) -> bool:
        return (self.state is LoadState.READY and not self.unhealthy
                and set(self.expected) <= set(self.models))

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ready" if self.ready else self.state.value,
            "models": self.models,
            "expected": self.expected,
        }
        if self.unhealthy:
            body["unhealthy"] = self.unhealthy
        if self.error:
            body["error"] = self.error
        return body

    def why_not_loaded(self, kind: str, settings: Settings) -> str:
        """For a route's 503: the real reason its model is not there."""
        if kind in self.expected:
            if self.state is LoadState.FAILED:
                return f"model {kind!r} failed to load: {self.error}"
            return f"model {kind!r} is still loading; retry shortly"
        served = ", ".join(self.expected) or "none"
        if settings.wanted_models() is not None:
            return (f"model {kind!r} is not served here: AUDIOSERVE_MODELS={settings.models} "
                    f"(serving: {served})")
        return (f"model {kind!r} is not served here: there was no pack at "
                f"{settings.models_dir / kind} when the server started (serving: {served}); "
                f"build it with `python -m export {kind} ...` and restart")


class ModelLoader:
    """Opens every pack's sessions (in a thread: slow), then starts and warms them up.

    Pipelines are added to the shared `pipelines` dict as each becomes ready, so a route
    of a loaded model works while another still loads; readiness waits for all of them.
    """

    def __init__(
        self,
        packs: list[ModelPack],
        settings: Settings,
        metrics: Metrics,
        pipelines: dict[str, Pipeline],
        cpu: CpuWorkers,
        seam: Seam | None = None,
    ) -> None:
        self._packs = packs
        self._settings = settings
        self._metrics = metrics
        self._cpu = cpu
        self.seam = seam or LocalSeam()
        self.pipelines = pipelines
        self._state = LoadState.LOADING
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._provider: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_logged())

    def provider(self) -> str:
        """This process's provider, decided (and a fall-back to CPU logged) once."""
        if self._provider is None:
            self._provider = resolve_provider(self._settings.provider)
        return self._provider

    async def run(self) -> None:
        for pack in self._packs:
            facts = await self.seam.attach(pack.kind)
            provider = None if facts else self.provider()
            # cancelled by close(), this await ends at once; the thread finishes the load
            # and the interpreter waits for it at exit, but nothing more is logged or started
            pipeline, loaded = await asyncio.to_thread(
                load_pipeline, pack, self._settings, self._metrics, self._cpu, self.seam, facts,
                provider,
            )
            log.info("%s", loaded)
            try:
                await pipeline.start()
            except BaseException:
                await pipeline.stop()
                raise
            self.pipelines[pack.kind] = pipeline
        self._state = LoadState.READY
        log.info("ready: %s", ", ".join(describe(p) for p in self.pipelines.values())
                 or "no model (AUDIOSERVE_MODELS=none)")

    async def _run_logged(self) -> None:
        try:
            await self.run()
        except Exception as exc:
            self._state = LoadState.FAILED
            self._error = str(exc)
            known = isinstance(exc, PackError | RuntimeError)  # their message names the cause
            log.critical("loading model packs failed: %s", exc, exc_info=None if known else exc)
            log.debug("loading model packs failed", exc_info=exc)

    @property
    def failure(self) -> str | None:
        """Why loading failed (the server cannot serve what it was asked to), or None."""
        return self._error if self._state is LoadState.FAILED else None

    def status(self) -> LoaderStatus:
        return LoaderStatus(
            state=self._state,
            models=sorted(self.pipelines),
            expected=sorted(p.kind for p in self._packs),
            unhealthy=sorted(k for k, p in self.pipelines.items() if not p.healthy),
            error=self._error,
        )

    async def close(self) -> None:
        """Stop loading, then drain and stop every pipeline."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._state = LoadState.STOPPED
        for pipeline in self.pipelines.values():
            await pipeline.stop()
