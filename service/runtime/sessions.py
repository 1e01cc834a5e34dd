"""The one ONNX Runtime session factory: provider choice, threads, warm-up, IO binding.

CUDA is used when this onnxruntime build has it (onnxruntime-gpu), otherwise CPU, and the
fall-back is logged. BLAS libraries are pinned to one thread in the process (see
`service/__init__.py`): ORT owns the cores.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger("audioserve.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeConfig:
    provider: str = "auto"  # auto | cuda | cpu
    device_id: int = 0
    intra_op_threads: int = 0
    intra_op_spinning: bool = False
    cpu_arena: bool = True
    fixed_shapes: bool = False
    """Every call has the same input shapes but the batch (CLAP's audio windows). Only
    then do ORT's memory patterns pay: with shapes that vary (lengths, decoding steps) it
    plans and keeps one per new shape. 14 mixed-length batches through the tiny
    Emotion2Vec+ graph: 2.22 s and 509 MB with patterns, 1.26 s and 359 MB without."""


def resolve_provider(wanted: str, *, log_fallback: bool = True) -> str:
    """'cuda' or 'cpu', as this onnxruntime build allows."""
    available = ort.get_available_providers()
    if wanted == "cpu":
        return "cpu"
    if CUDA in available:
        return "cuda"
    if wanted == "cuda":
        raise RuntimeError(
            f"AUDIOSERVE_PROVIDER=cuda but onnxruntime offers only {available}; "
            "install the `gpu` extra (onnxruntime-gpu) with a matching CUDA"
        )
    if log_fallback:
        log.warning("CUDAExecutionProvider not available (%s): running on CPU", available)
    return "cpu"


def providers_for(provider: str, device_id: int) -> list[str | tuple[str, dict[str, object]]]:
    if provider == "cuda":
        return [
            (
                CUDA,
                {
                    "device_id": device_id,
                    "arena_extend_strategy": "kNextPowerOfTwo",
                    "cudnn_conv_algo_search": "HEURISTIC",  # EXHAUSTIVE re-tunes per shape
                    "do_copy_in_default_stream": True,
                },
            ),
            CPU,
        ]
    return [CPU]


def create_session(path: Path, config: RuntimeConfig) -> ort.InferenceSession:
    """Open one graph. Raises RuntimeError naming the file when it cannot be loaded."""
    provider = resolve_provider(config.provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    # ORT's CPU arena keeps its high-water mark resident for good; without it large
    # tensors go back to the system when freed, but CLAP's audio graph ran 20 % slower at
    # batch 8 here (524 vs 429 ms). On by default; the CUDA arena is unaffected.
    options.enable_cpu_mem_arena = config.cpu_arena
    options.enable_mem_pattern = config.fixed_shapes
    spinning = "1" if config.intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers_for(provider, config.device_id)
        )
    except Exception as exc:  # ORT raises several unrelated types here
        raise RuntimeError(f"cannot load ONNX graph {path}: {exc}") from exc
    return session


def session_provider(session: ort.InferenceSession) -> str:
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def open_graph(path: Path, config: RuntimeConfig) -> GraphRunner:
    """A session wrapped for serving: graphs whose shapes vary give the CPU arena's peaks
    back (see `GraphRunner`)."""
    session = create_session(path, config)
    release = config.cpu_arena and not config.fixed_shapes
    return GraphRunner(session, config.device_id, release_peaks=release)


class GraphRunner:
    """Runs one session; on CUDA through IO binding so outputs are copied back only once.

    With `release_peaks` (CPU), a call whose largest input is over `PEAK_FACTOR` times the
    median of the recent calls' runs with ORT's arena shrinkage, so the memory a rare large
    batch needed goes back to the system when it ends. Without it the arena keeps every
    peak for good. Tiny Emotion2Vec+ graph, steady 4 x 3 s batches then three of 8 x 12 s:
    RSS stayed +236 MB without release, +37 MB with it, and only those three batches paid
    (278 vs 174 ms); shrinking after every call instead cost 1.2-1.6x on every batch.
    """

    PEAK_FACTOR = 2.0
    RECENT_CALLS = 64
    MIN_HISTORY = 8

    def __init__(self, session: ort.InferenceSession, device_id: int = 0, *,
                 release_peaks: bool = False) -> None:
        self.session = session
        self.provider = session_provider(session)
        self.device_id = device_id
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.release_peaks = release_peaks and self.provider == "cpu"
        self._recent: deque[int] = deque(maxlen=self.RECENT_CALLS)
        self._lock = threading.Lock()  # batch workers call run() concurrently
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.peaks_released = 0

    def is_peak(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """Record this call's size; True when it is a peak to give back afterwards."""
        size = max(int(np.asarray(v).size) for v in feeds.values())
        with self._lock:
            typical = (statistics.median(self._recent)
                       if len(self._recent) >= self.MIN_HISTORY else None)
            self._recent.append(size)
        return typical is not None and size > self.PEAK_FACTOR * typical

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.provider == "cuda":
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in self.output_names:
                binding.bind_output(name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            outputs = binding.copy_outputs_to_cpu()
        elif self.release_peaks and self.is_peak(feeds):
            outputs = self.session.run(self.output_names, dict(feeds), self._shrink)
            self.peaks_released += 1
        else:
            outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs, strict=True))
