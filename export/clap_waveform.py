"""The CLAP waveform graph's contract and its composition (no torch: quant/ uses it too).

A waveform graph is the log-mel front-end (export/clap_logmel.py, `waveform` -> `log_mel`,
float64 inside) put in front of one precision of the pack's audio graph, whose
`input_features` it feeds. Composing rather than converting keeps the front-end out of
fp16/int8 conversion, and makes the HTSAT part the very graph the host path runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnx.compose

LOG_MEL = "log_mel"
"""The front-end's output, kept under this name inside the waveform graphs (tests and
the export's parity check read it there)."""
FRONT_END_PREFIX = "logmel/"
"""Prefix of every front-end node and initializer in a waveform graph."""
WAVEFORM_INPUTS = ["waveform"]
FUSED_WAVEFORM_INPUTS = ["waveform", "long_features", "is_longer", "use_waveform"]
OPSET = 17

FRONT_END_FILE = "logmel.onnx"
WAVEFORM_GRAPH = "audio_waveform"


def waveform_graph_file(precision: str) -> str:
    return f"{WAVEFORM_GRAPH}.{precision}.onnx"


def composed_entry(audio_entry: dict[str, Any], precision: str, fused: bool) -> dict[str, Any]:
    """The manifest entry of the waveform graph built on `audio_entry` (one precision)."""
    return {
        "file": waveform_graph_file(precision),
        "inputs": FUSED_WAVEFORM_INPUTS if fused else WAVEFORM_INPUTS,
        "outputs": list(audio_entry["outputs"]),
        "batch_invariant": bool(audio_entry.get("batch_invariant", True)),
        "composed": {"front_end": FRONT_END_FILE, "graph": "audio", "graph_file":
                     audio_entry["file"], "output": LOG_MEL, "node_prefix": FRONT_END_PREFIX,
                     "compute": "float64", "fused": fused},
    }


def compose_waveform_graph(front_end: Path, audio: Path, out: Path) -> None:
    """`front_end` feeding `audio`'s `input_features` (any precision of it), one graph.

    The front-end's names get FRONT_END_PREFIX (its nodes are then easy to find and never
    collide with the audio graph's); the waveform inputs and `log_mel` keep theirs."""
    fe = onnx.load(str(front_end))
    model = onnx.load(str(audio))
    _match_versions(fe, model)
    _sort_topologically(model.graph)
    fe = onnx.compose.add_prefix(fe, FRONT_END_PREFIX, rename_inputs=False,
                                 rename_outputs=False)
    merged = onnx.compose.merge_models(fe, model, io_map=[(LOG_MEL, "input_features")])
    merged.graph.name = "clap_audio_waveform"
    onnx.save(merged, str(out))


def _match_versions(front_end: onnx.ModelProto, audio: onnx.ModelProto) -> None:
    """merge_models wants equal IR versions and opsets; quantizers and converters may
    change them, so the front-end (basic ops, same semantics in opsets 17-21) follows."""
    def default_opset(m: onnx.ModelProto) -> int:
        return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))

    version = default_opset(audio)
    if not OPSET <= version <= 21:
        raise ValueError(f"audio graph opset {version}: the log-mel front-end needs 17-21")
    front_end.ir_version = audio.ir_version
    for entry in front_end.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
    domains = {o.domain for o in front_end.opset_import}
    for entry in audio.opset_import:
        if entry.domain not in domains:
            front_end.opset_import.append(entry)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """merge_models checks the order; onnxruntime's fp16 converter appends its input
    Casts at the end of the node list (ORT itself does not mind)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    placed = [False] * len(nodes)
    ordered: list[onnx.NodeProto] = []
    while len(ordered) < len(nodes):
        before = len(ordered)
        for index, node in enumerate(nodes):
            if not placed[index] and all(name in known for name in node.input):
                placed[index] = True
                known.update(node.output)
                ordered.append(node)
        if len(ordered) == before:
            raise ValueError(f"graph {graph.name!r} has a cycle or a missing input")
    del graph.node[:]
    graph.node.extend(ordered)


def log_mel_output(path: Path) -> onnx.ModelProto:
    """A waveform graph with `log_mel` added as an output (for parity checks)."""
    model = onnx.load(str(path))
    if not any(o.name == LOG_MEL for o in model.graph.output):
        info = onnx.helper.make_tensor_value_info(LOG_MEL, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(info)
    return model


ALL = frozenset({"bool", "float", "double", "float16", "int32", "int64", "int8", "uint8"})
CUDA_KERNELS: dict[str, frozenset[str]] = {
    "Cast": ALL, "Concat": ALL, "Constant": ALL, "ConstantOfShape": ALL, "Expand": ALL,
    "Gather": ALL, "Reshape": ALL, "Slice": ALL, "Transpose": ALL, "Unsqueeze": ALL,
    "Where": ALL,
    "Clip": frozenset({"float", "double", "float16"}),
    "Log": frozenset({"float", "double", "float16"}),
    "MatMul": frozenset({"float", "double", "float16"}),
    "Max": frozenset({"float", "double", "float16"}),
    "Mul": frozenset({"float", "double", "float16"}),
    "Pad": frozenset({"float", "double", "float16"}),
}
"""The ops (and input element types) the front-end may use: the CUDA execution provider
registers these kernels (onnxruntime's docs/OperatorKernels.md, CUDAExecutionProvider
section; no DFT or STFT there). A test holds the exported front-end to this list."""
