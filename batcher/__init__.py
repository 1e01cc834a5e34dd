"""Model-agnostic scheduling: the dynamic batcher and the step scheduler for decoding.

Nothing here imports FastAPI, ONNX Runtime or `service`: callers hand in plain functions
and receive plain results or the errors below.
"""

from batcher.dynamic import BatchConfig, BatchObserver, BatchStats, DynamicBatcher
from batcher.errors import BatcherClosed, BatcherError, DeadlineExceeded, Overloaded
from batcher.gate import CoreGate, due_since
from batcher.sizing import BatchSizer

__all__ = [
    "BatchConfig",
    "BatchObserver",
    "BatchSizer",
    "BatchStats",
    "BatcherClosed",
    "BatcherError",
    "CoreGate",
    "DeadlineExceeded",
    "DynamicBatcher",
    "Overloaded",
    "due_since",
]
