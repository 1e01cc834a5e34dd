"""fp32 graph -> fp16 graph with float32 inputs and outputs.

onnxruntime's own converter (`onnxruntime.transformers.float16`) is the one whose graphs
ORT loads (onnxconverter-common's did not, notes/clap.md). Its default block list keeps
ops without fp16 kernels in fp32; each recipe adds the numerically fragile ones (clip-long
reductions, norms), which then run in fp32 behind Cast nodes. fp16 is for CUDA: on CPU it
is no faster (the casts cost more than they save).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16


def convert(src: Path, dst: Path, *, keep_ops: tuple[str, ...] = ()) -> dict[str, object]:
    """Write the fp16 variant of `src` to `dst`; returns what the manifest records."""
    model = onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=block, disable_shape_infer=False
    )
    _drop_duplicate_nodes(converted.graph)
    onnx.save(converted, str(dst))
    return {"method": "fp16", "keep_io_types": True, "kept_fp32_ops": sorted(keep_ops)}


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """The converter inserts one identical Cast per consumer when an initializer feeds
    several blocked nodes (dynamo graphs share constants such as RMSNorm's exponent 2):
    same name, same output, which ORT rejects. Keep the first of each."""
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
