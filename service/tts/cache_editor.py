"""Joins and leaves of the decode batch's KV cache, done where the cache lives.

Why: a device-resident cache (`DeviceKVCache`) that comes to the host for every join and
leave moves all of it over PCIe twice and edits it in numpy: at ChatTTS's real size that
is 120 KiB per token and row (8 rows of 300 tokens: 295 MB each way), once every few
decoding steps under continuous batching. These two graphs do the same edits on the
device instead, through IO binding, so only the joining rows' own prefill cache travels:
- join: each layer tensor of the batch [n, h, P, d] and of the new rows [m, h, Q, d] is
  left-padded with zeros to max(P, Q) columns (`Pad`) and the two stacked (`Concat`);
- keep: the remaining rows are taken (`Gather` on axis 0) and leading columns that are
  padding in all of them dropped (`Slice` on axis 2).
Both are pure data movement (no arithmetic), so the result is bit for bit the numpy one.
They are built here from the tensor count and element type (nothing model-specific), with
ops the CUDA execution provider has kernels for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

_ELEM = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16}
_INT64_MAX = np.iinfo(np.int64).max
_OPSET = 17


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto]) -> bytes:
    graph = helper.make_graph(nodes, "kv_cache_edit", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def join_graph(tensors: int, elem: int) -> bytes:
    cache = ["n", "h", "p", "d"]
    inputs = [helper.make_tensor_value_info(f"a{i}", elem, cache) for i in range(tensors)]
    inputs += [helper.make_tensor_value_info(f"b{i}", elem, cache) for i in range(tensors)]
    inputs += [helper.make_tensor_value_info(n, TensorProto.INT64, [8]) for n in ("pa", "pb")]
    nodes, outputs = [], []
    for i in range(tensors):
        nodes += [helper.make_node("Pad", [f"a{i}", "pa"], [f"pa{i}"]),
                  helper.make_node("Pad", [f"b{i}", "pb"], [f"pb{i}"]),
                  helper.make_node("Concat", [f"pa{i}", f"pb{i}"], [f"o{i}"], axis=0)]
        outputs.append(helper.make_tensor_value_info(f"o{i}", elem, cache))
    return _model(nodes, inputs, outputs)


def keep_graph(tensors: int, elem: int) -> bytes:
    cache = ["n", "h", "p", "d"]
    inputs = [helper.make_tensor_value_info(f"a{i}", elem, cache) for i in range(tensors)]
    inputs += [helper.make_tensor_value_info("rows", TensorProto.INT64, ["k"]),
               helper.make_tensor_value_info("start", TensorProto.INT64, [1])]
    nodes = [helper.make_node("Constant", [], ["end"], value=helper.make_tensor(
                 "end_v", TensorProto.INT64, [1], [_INT64_MAX])),
             helper.make_node("Constant", [], ["axis"], value=helper.make_tensor(
                 "axis_v", TensorProto.INT64, [1], [2]))]
    outputs = []
    for i in range(tensors):
        nodes += [helper.make_node("Gather", [f"a{i}", "rows"], [f"g{i}"], axis=0),
                  helper.make_node("Slice", [f"g{i}", "start", "end", "axis"], [f"o{i}"])]
        outputs.append(helper.make_tensor_value_info(f"o{i}", elem, cache))
    return _model(nodes, inputs, outputs)


def _pads(columns: int) -> np.ndarray:
    """Pad's [begin x4, end x4] for `columns` zeros on the left of axis 2."""
    return np.array([0, 0, columns, 0, 0, 0, 0, 0], np.int64)


class CacheEditor:
    """The two graphs as sessions on the cache's device; OrtValues in, OrtValues out."""

    def __init__(self, tensors: int, element_type: str, device: str, device_id: int = 0
                 ) -> None:
        elem = _ELEM.get(element_type)
        if elem is None:
            raise ValueError(f"KV cache of {element_type}: only float32/float16 are edited")
        self.tensors, self.device, self.device_id = tensors, device, device_id
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._join = ort.InferenceSession(join_graph(tensors, elem), options,
                                          providers=providers)
        self._keep = ort.InferenceSession(keep_graph(tensors, elem), options,
                                          providers=providers)

    def _run(self, session: ort.InferenceSession, values: dict[str, ort.OrtValue],
             host: dict[str, np.ndarray]) -> list[ort.OrtValue]:
        binding = session.io_binding()
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for name, array in host.items():
            binding.bind_cpu_input(name, array)
        for i in range(self.tensors):
            binding.bind_output(f"o{i}", self.device, self.device_id)
        session.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def join(self, batch: Sequence[ort.OrtValue], rows: Sequence[ort.OrtValue],
             batch_length: int, rows_length: int) -> list[ort.OrtValue]:
        """The batch with `rows` stacked under it, both left-padded to the longer."""
        length = max(batch_length, rows_length)
        values = {f"a{i}": v for i, v in enumerate(batch)}
        values.update({f"b{i}": v for i, v in enumerate(rows)})
        return self._run(self._join, values, {"pa": _pads(length - batch_length),
                                              "pb": _pads(length - rows_length)})

    def keep(self, batch: Sequence[ort.OrtValue], rows: Sequence[int], start: int
             ) -> list[ort.OrtValue]:
        """Rows `rows` (in that order) of the batch, from column `start` on."""
        values = {f"a{i}": v for i, v in enumerate(batch)}
        return self._run(self._keep, values, {"rows": np.asarray(rows, np.int64),
                                              "start": np.array([start], np.int64)})
