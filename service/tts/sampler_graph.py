"""ChatTTS's token sampling as an ONNX graph, for the device the GPT runs on.

Why: the numpy sampler (service/tts/sampling.py) costs the host 0.6 ms per decoding step
for 8 sequences (32 rows of 626 logits: partition, softmax, cumulative sums) and 2.2 ms
for 32,
while the GPU's whole GPT step at real size is a few ms: on CUDA the engine thread would
spend a large share of every step sorting logits on one CPU core.

Same chain, same order, same per-request randomness: everything that depends on a
request's state is still computed on the host, cheaply, from its own history and RNG,
and passed in per row: the temperature, the repetition penalty's factors (`penalty **
count` for the <= 16 distinct recent ids, numpy's float32 power, so identical), top-p,
top-k, whether EOS is still masked, and the row's uniform draw. The graph then does what
sampling.py does on the logits: divide by the temperature, scale the penalised ids, sort
ascending (`TopK` largest=0), drop by cumulative probability and by rank (both keep >= 3),
unsort (`ScatterElements`), mask EOS, softmax, and pick by inverse CDF in float64 (or
argmax for greedy rows). Every op is row-wise, so a row's token never depends on its
batch-mates. Against the numpy sampler it can differ only where float32 sums taken in
another order straddle a threshold (tests measure agreement).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.tts.sampling import (
    MIN_TOKENS_TO_KEEP,
    REPETITION_WINDOW,
    Histories,
    RowParams,
    SamplingParams,
    penalised_ids,
)

_OPSET = 17
F, D, I64, B = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL


def _const(name: str, elem: int, values: list[float] | list[int], dims: list[int]
           ) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name + "_v", elem, dims, values))


def sampler_graph() -> bytes:
    """The graph: rows R, vocabulary V, penalised slots W (see the module note)."""
    n = helper.make_node
    inputs = [
        helper.make_tensor_value_info("logits", F, ["R", "V"]),
        helper.make_tensor_value_info("temperature", F, ["R", 1]),
        helper.make_tensor_value_info("penalty_ids", I64, ["R", "W"]),
        helper.make_tensor_value_info("penalty_factors", F, ["R", "W"]),
        helper.make_tensor_value_info("top_p", F, ["R", 1]),
        helper.make_tensor_value_info("top_k", I64, ["R", 1]),
        helper.make_tensor_value_info("mask_eos", B, ["R", 1]),
        helper.make_tensor_value_info("eos_id", I64, ["R", 1]),
        helper.make_tensor_value_info("uniform", D, ["R", 1]),
        helper.make_tensor_value_info("greedy", B, ["R", 1]),
    ]
    nodes = [
        _const("zero_f", F, [0.0], []), _const("one_f", F, [1.0], []),
        _const("neg_inf", F, [-np.inf], []), _const("zero_i", I64, [0], [1]),
        _const("one_i", I64, [1], [1]), _const("zero_s", I64, [0], []),
        _const("one_s", I64, [1], []), _const("keep", I64, [MIN_TOKENS_TO_KEEP], [1]),
        n("Shape", ["logits"], ["shape"]),
        n("Gather", ["shape", "zero_i"], ["rows"], axis=0),
        n("Gather", ["shape", "one_i"], ["vocab"], axis=0),
        n("Squeeze", ["vocab"], ["vocab_s"]),
        n("Range", ["zero_s", "vocab_s", "one_s"], ["positions"]),
        # temperature, then the penalty on an extra zero column that padding slots target
        n("Div", ["logits", "temperature"], ["scaled"]),
        n("Concat", ["rows", "one_i"], ["pad_shape"], axis=0),
        n("ConstantOfShape", ["pad_shape"], ["pad_col"],
          value=helper.make_tensor("z", F, [1], [0.0])),
        n("Concat", ["scaled", "pad_col"], ["wide"], axis=1),
        n("GatherElements", ["wide", "penalty_ids"], ["picked"], axis=1),
        n("Less", ["picked", "zero_f"], ["negative"]),
        n("Mul", ["picked", "penalty_factors"], ["times"]),
        n("Div", ["picked", "penalty_factors"], ["over"]),
        n("Where", ["negative", "times", "over"], ["penalised"]),
        n("ScatterElements", ["wide", "penalty_ids", "penalised"], ["wide_p"], axis=1),
        n("Slice", ["wide_p", "zero_i", "vocab", "one_i"], ["pen"]),
        # top-p then top-k on the ascending order (keep >= 3 each)
        n("TopK", ["pen", "vocab"], ["ranked", "order"], axis=1, largest=0, sorted=1),
        n("Softmax", ["ranked"], ["ranked_p"], axis=1),
        n("CumSum", ["ranked_p", "one_s"], ["cumulative"]),
        n("Sub", ["one_f", "top_p"], ["threshold"]),
        n("LessOrEqual", ["cumulative", "threshold"], ["low"]),
        n("Sub", ["vocab", "keep"], ["protected_from"]),
        n("Less", ["positions", "protected_from"], ["droppable"]),
        n("And", ["low", "droppable"], ["drop_p"]),
        n("Where", ["drop_p", "neg_inf", "ranked"], ["after_p"]),
        n("Max", ["top_k", "keep"], ["k_low"]),
        n("Min", ["k_low", "vocab"], ["k"]),
        n("Sub", ["vocab", "k"], ["kth_at"]),
        n("GatherElements", ["after_p", "kth_at"], ["kth"], axis=1),
        n("Less", ["after_p", "kth"], ["drop_k"]),
        n("Where", ["drop_k", "neg_inf", "after_p"], ["after_k"]),
        n("ScatterElements", ["pen", "order", "after_k"], ["filtered_all"], axis=1),
        # EOS masked while under min_new_tokens
        n("Equal", ["positions", "eos_id"], ["is_eos"]),
        n("And", ["is_eos", "mask_eos"], ["drop_eos"]),
        n("Where", ["drop_eos", "neg_inf", "filtered_all"], ["filtered"]),
        # draw: inverse CDF in float64 on the float32 softmax, or argmax
        n("Softmax", ["filtered"], ["probs"], axis=1),
        n("Cast", ["probs"], ["probs64"], to=D),
        n("CumSum", ["probs64", "one_s"], ["cdf"]),
        n("Sub", ["vocab", "one_i"], ["last"]),
        n("Gather", ["cdf", "last"], ["total"], axis=1),
        n("Mul", ["uniform", "total"], ["target"]),
        n("LessOrEqual", ["cdf", "target"], ["below"]),
        n("Cast", ["below"], ["below_i"], to=I64),
        n("ReduceSum", ["below_i", "one_i"], ["chosen_raw"], keepdims=1),
        n("Min", ["chosen_raw", "last"], ["chosen"]),
        n("ArgMax", ["filtered"], ["best"], axis=1, keepdims=1),
        n("Where", ["greedy", "best", "chosen"], ["ids2"]),
        n("Squeeze", ["ids2", "one_i"], ["ids"]),
    ]
    graph = helper.make_graph(nodes, "chattts_sampler", inputs,
                              [helper.make_tensor_value_info("ids", I64, ["R"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def penalty_slots(histories: Histories, penalties: np.ndarray, vocab: int,
                  window: int = REPETITION_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the distinct ids of its last `window` tokens and `penalty ** count` (numpy
    float32, as sampling.py computes it); unused slots point at the extra column `vocab`
    with factor 1."""
    rows = len(histories)
    ids = np.full((rows, window), vocab, np.int64)
    factors = np.ones((rows, window), np.float32)
    row, token, factor = penalised_ids(histories, penalties, vocab, window)
    slot = np.arange(row.size) - np.searchsorted(row, np.arange(rows))[row]
    ids[row, slot] = token
    factors[row, slot] = factor
    return ids, factors


class GraphSampler:
    """`sample_rows` (sampling.py) with the chain run in an ORT session on `provider`."""

    def __init__(self, provider: str = "cpu", device_id: int = 0) -> None:
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if provider == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(sampler_graph(), options, providers=providers)
        self.provider = provider

    def sample_rows(self, logits: np.ndarray, histories: Histories,
                    params: Sequence[SamplingParams], steps: Sequence[int],
                    uniforms: np.ndarray, *, eos_id: int) -> np.ndarray:
        rows, vocab = logits.shape
        row = RowParams(params, steps)
        ids, factors = penalty_slots(histories, row.values("repetition_penalty", 1.0), vocab,
                                     row.window)
        feeds = {
            "logits": np.ascontiguousarray(logits, np.float32),
            "temperature": row.values("temperature", 1.0)[:, None],
            "penalty_ids": ids, "penalty_factors": factors,
            "top_p": row.values("top_p", 1.0)[:, None],
            "top_k": row.values("top_k", vocab, np.int64)[:, None],
            "mask_eos": row.eos_masked()[:, None],
            "eos_id": np.full((rows, 1), eos_id, np.int64),
            "uniform": np.asarray(uniforms, np.float64).reshape(rows, 1),
            "greedy": row.values("greedy", False, bool)[:, None],
        }
        out: np.ndarray = self.session.run(["ids"], feeds)[0]
        return out
