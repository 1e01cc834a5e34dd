"""What every model pipeline offers the app: load, start (warm-up), stop (drain), info.

A pipeline owns its ONNX sessions (through `service.runtime.sessions`) and its batchers; routes
only call its public coroutines. Only the batch functions touch a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from batcher import BatchConfig
from service.runtime.admission import CpuWorkers
from service.runtime.metrics import Metrics
from service.runtime.packs import ModelPack
from service.runtime.sessions import RuntimeConfig
from service.seam.handoff import LocalSeam, Seam
from service.settings import Settings


@dataclass(frozen=True)
class LoadContext:
    """Everything a pipeline needs to build itself."""

    settings: Settings
    runtime: RuntimeConfig
    precision: str
    """Resolved precision (fp32/fp16/int8), already checked to exist in the pack."""
    metrics: Metrics
    batch: BatchConfig = field(default_factory=BatchConfig)
    """The settings' batching, with the batch workers resolved for this model."""
    cpu: CpuWorkers = field(default_factory=CpuWorkers)
    """The shared, deadline-aware pool for decode/feature/encode work."""
    seam: Seam = field(default_factory=LocalSeam)
    """Where the batchers and the engine run: here, or in a model deployment's replicas
    (`service.seam.handoff`); when not here, `load()` opens no session."""


class Pipeline(Protocol):
    name: str
    pack: ModelPack
    concurrent_batches: bool
    """Whether batches of this model may run in parallel (`batch_workers`)."""

    async def start(self) -> None:
        """Start batchers and warm every graph up; the service is ready after this."""

    async def stop(self) -> None:
        """Stop admitting work and drain what is queued."""

    @property
    def healthy(self) -> bool:
        """False when a worker died: readiness goes down."""

    def info(self) -> dict[str, Any]:
        """For GET /v1/models: kind, precision, provider, demo flag, source, graphs."""
