"""The one ONNX Runtime session factory: provider choice, threads, warm-up, IO binding.

CUDA is used when this onnxruntime build has it (onnxruntime-gpu), otherwise CPU, and the
fall-back is logged. BLAS libraries are pinned to one thread in the process (see
`service/__init__.py`): ORT owns the cores.
"""

from __future__ import annotations

import logging
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


def resolve_provider(wanted: str) -> str:
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


class GraphRunner:
    """Runs one session; on CUDA through IO binding so outputs are copied back only once."""

    def __init__(self, session: ort.InferenceSession, device_id: int = 0) -> None:
        self.session = session
        self.provider = session_provider(session)
        self.device_id = device_id
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.provider == "cuda":
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in self.output_names:
                binding.bind_output(name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            outputs = binding.copy_outputs_to_cpu()
        else:
            outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs, strict=True))
