"""fp32 graph -> int8 graph: static QDQ, weight-only MatMulNBits, or dynamic.

- static: activation scales fixed by a calibration pass (MinMax), QDQ format, per-channel
  int8 weights, uint8 activations; only `op_types` are quantized (norms and softmax stay
  float). Fixed scales ignore batch-mates, but see quant/recipes.py for padded items.
- weight-only: MatMul (and constant-weight Gemm) weights in 8- or 4-bit blocks of 32
  (MatMulNBits); activations float, or int8 per row and block (`accuracy_level` 4).
- dynamic: per-batch activation scales -> batch-dependent results (opt-in only).

The quantizers write uuid-named external-data files into the working directory, so they
run inside a temporary directory; graphs from the dynamo exporter carry `value_info` that
breaks the quantizer's shape inference, so it is dropped from a single-file copy first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from quant.recipes import Method

WEIGHT_ONLY_BLOCK = 32


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary working directory (the quantizers litter the cwd)."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="quant-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def _clean_copy(src: Path, folder: Path) -> Path:
    """A single-file copy of `src` without value_info (see the module note)."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    path = folder / "source.onnx"
    onnx.save(model, str(path))
    return path


def quantize(
    src: Path,
    dst: Path,
    method: Method,
    *,
    op_types: tuple[str, ...],
    reader: CalibrationDataReader | None = None,
    bits: int = 8,
    keep_nodes: tuple[str, ...] = (),
    accuracy_level: int | None = None,
) -> dict[str, object]:
    """Write the int8 variant of `src` to `dst`; returns what the manifest records."""
    src, dst = src.resolve(), dst.resolve()
    with _scratch() as tmp:
        clean = _clean_copy(src, tmp)
        excluded = nodes_matching(clean, keep_nodes)
        if method is Method.STATIC:
            if reader is None:
                raise ValueError("static quantization needs a calibration reader")
            quantize_static(
                str(clean), str(dst), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types), per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
            )
            return {"method": method.value, "format": "QDQ", "op_types": list(op_types),
                    "per_channel": True, "weights": "int8", "activations": "uint8",
                    "calibrate_method": "MinMax", "kept_float_nodes": excluded}
        if method is Method.DYNAMIC:
            quantize_dynamic(str(clean), str(dst), op_types_to_quantize=list(op_types),
                             per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=excluded)
            return {"method": method.value, "op_types": list(op_types), "per_channel": True,
                    "weights": "int8", "activations": "uint8 (scales per batch)",
                    "kept_float_nodes": excluded}
        return _weight_only(clean, dst, bits, excluded, accuracy_level)


def nodes_matching(path: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes whose name contains any of `patterns`."""
    if not patterns:
        return []
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if any(p in n.name for p in patterns)]


def _weight_only(src: Path, dst: Path, bits: int, excluded: list[str],
                 accuracy_level: int | None) -> dict[str, object]:
    if bits not in (4, 8):
        raise ValueError(f"weight-only quantization takes 4 or 8 bits, not {bits}")
    config = DefaultWeightOnlyQuantConfig(
        block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True, bits=bits,
        accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",),
    )
    model = onnx.load(str(src))
    gemms = gemm_to_matmul(model.graph, excluded)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config,
                                     nodes_to_exclude=excluded)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {"method": Method.WEIGHT_ONLY.value, "op": "MatMulNBits", "bits": bits,
            "block_size": WEIGHT_ONLY_BLOCK, "symmetric": True, "algorithm": "RTN",
            "accuracy_level": accuracy_level,
            "activations": "float" if accuracy_level is None
            else f"int8 per row and block (accuracy_level {accuracy_level})",
            "kept_float_nodes": excluded,
            "gemm_rewritten_as_matmul": gemms}


def gemm_to_matmul(graph: onnx.GraphProto, skip: list[str]) -> int:
    """Rewrite `Gemm(A, W[, C])` with a constant W (alpha = beta = 1, A not transposed) as
    `MatMul(A, W') + C`, since MatMulNBits only takes MatMul (Linear layers on 2-D inputs,
    like ChatTTS's heads, export as Gemm). Returns how many were rewritten."""
    weights = {init.name: init for init in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        rewritable = (node.op_type == "Gemm" and node.name not in skip
                      and node.input[1] in weights
                      and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
                      and not attrs.get("transA", 0))
        if not rewritable:
            nodes.append(node)
            continue
        w = onnx.numpy_helper.to_array(weights[node.input[1]])
        w_name = f"{node.input[1]}__matmul_{count}"
        graph.initializer.append(onnx.numpy_helper.from_array(
            np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [product],
                                           name=f"{node.name}__matmul"))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]],
                                               [node.output[0]], name=f"{node.name}__bias"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def count_ops(path: Path, op_types: tuple[str, ...]) -> int:
    """How many nodes of `op_types` a graph has (0: quantizing it would change nothing)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for node in model.graph.node if node.op_type in op_types)
