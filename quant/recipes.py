"""Per-model defaults: how each graph of each pack kind is turned into fp16 and int8.

The service promises that batching never changes a result, so each graph's DEFAULT int8
must be batch-invariant. Two methods are:
- static QDQ (calibrated, fixed activation scales) -- exactly, but only for graphs whose
  items all have ONE shape (CLAP audio: every item is a 10 s log-mel). With padded,
  variable-length items, fp32 reductions over the padded axis (the waveform norm's sum,
  masked pooling) differ between "alone" and "in a batch" by ~1e-7, and a fixed-scale
  QuantizeLinear turns such a difference into a whole quantization step when a value sits
  on a rounding boundary: Emotion2Vec+ base, static int8, item alone vs in a batch of 8:
  up to 4e-2 in the logits (measured here), as bad as dynamic int8 (2e-2).
- weight-only (MatMulNBits, 8-bit blocks): activations stay float, so batching moves
  results by fp32 noise only (1.9e-6 on the same Emotion2Vec+ test, and more accurate).
  The default for every graph fed padded items (CLAP text, Emotion2Vec+, ChatTTS).
Dynamic int8 computes activation scales per batch, so an item's result depends on its
batch-mates by design: opt-in only, flagged `batch_invariant: false` in the manifest.
(Further measured facts: ../shared/notes/{clap,emotion2vec,chattts}.md.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Method(enum.Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight-only"

    @property
    def batch_invariant(self) -> bool:
        return self is not Method.DYNAMIC


class Compare(enum.Enum):
    """How an output is compared with fp32 in the report."""

    EMBEDDING = "embedding"  # max abs diff + cosine of centred rows
    LOGITS = "logits"  # max abs diff + top-1 agreement along the last axis
    VALUES = "values"  # max abs diff only


# Reductions whose fp16 sums can overflow or lose the small differences that matter:
# waveform normalisation (mean/variance over a whole clip), masked mean pooling, norms.
FRAGILE_REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt")


@dataclass(frozen=True)
class GraphRecipe:
    int8_method: Method
    compare: dict[str, Compare]
    """Outputs with a fixed per-item shape, compared in the report (others are skipped)."""
    int8_op_types: tuple[str, ...] = ("MatMul", "Gemm")
    padded_items: bool = False
    """Batched items are padded to a common length, so fp32 reductions over that axis
    differ from the item alone in the last bit: activation quantization (static, or
    weight-only with int8 compute) then is NOT batch-invariant and is flagged so."""
    int8_accuracy_level: int | None = None
    """Weight-only compute: None = float (dequantized weights). `--accuracy-level 4`
    quantizes activations per row and block inside MatMulNBits (MLAS int8 kernels: 2x
    faster ChatTTS decode steps here) but, like static scales, turns last-bit fp32
    differences into rounding flips: real-size GPT greedy codes, 8 left-padded prompts
    batched vs alone, agreed 84 % (float compute: 100 %). So it is flagged
    batch-dependent on padded graphs and never a default."""
    int8_keep_nodes: tuple[str, ...] = ()
    """Node-name substrings kept float in int8 (e.g. the output projection: on random
    weights its activation rounding alone swamps the input-dependent part of the embedding)."""
    fp16_keep_ops: tuple[str, ...] = ()
    """Op types kept in fp32 on top of onnxruntime's default fp16 block list."""
    pad_constants: dict[str, str] = field(default_factory=dict)
    """Per input: the manifest constant holding its padding value when items are batched
    (inputs not named pad with 0)."""


RECIPES: dict[str, dict[str, GraphRecipe]] = {
    "clap": {
        # Conv is the patch embedding only; LayerNorm/Softmax stay float (not in op types).
        "audio": GraphRecipe(Method.STATIC, {"audio_embeds": Compare.EMBEDDING},
                             int8_op_types=("MatMul", "Gemm", "Conv"),
                             int8_keep_nodes=("/audio_projection/",),
                             fp16_keep_ops=("ReduceL2",)),
        # composed from the log-mel front-end and `audio` (quant/variants.py): the
        # recipe only says what the report compares
        "audio_waveform": GraphRecipe(Method.STATIC, {"audio_embeds": Compare.EMBEDDING}),
        "text": GraphRecipe(Method.WEIGHT_ONLY, {"text_embeds": Compare.EMBEDDING},
                            padded_items=True,
                            int8_keep_nodes=("/text_projection/",),
                            fp16_keep_ops=("ReduceL2",),
                            pad_constants={"input_ids": "pad_token_id"}),
    },
    "emotion2vec": {
        # For --method static: ConvInteger/QDQ Conv on the CNN front-end is less accurate
        # and slower on CPU (notes/emotion2vec.md), so MatMul/Gemm only, and the head on
        # the pooled embedding (a padded-axis sum) stays float.
        "model": GraphRecipe(Method.WEIGHT_ONLY,
                             {"logits": Compare.LOGITS, "embedding": Compare.EMBEDDING},
                             padded_items=True,
                             int8_keep_nodes=("/model/proj/",),
                             fp16_keep_ops=FRAGILE_REDUCTIONS),
    },
    "chattts": {
        "embed_text": GraphRecipe(Method.WEIGHT_ONLY, {"inputs_embeds": Compare.VALUES}),
        "embed_code": GraphRecipe(Method.WEIGHT_ONLY, {"inputs_embeds": Compare.VALUES}),
        "gpt": GraphRecipe(Method.WEIGHT_ONLY, {"code_logits": Compare.LOGITS},
                           padded_items=True, fp16_keep_ops=FRAGILE_REDUCTIONS),
        "head_text": GraphRecipe(Method.WEIGHT_ONLY, {"text_logits": Compare.LOGITS}),
        # the GPT's rows see left-padded keys; the vocoder side pads mels at the end
        "decoder": GraphRecipe(Method.WEIGHT_ONLY, {"mel": Compare.VALUES}, padded_items=True),
        "dvae_decode": GraphRecipe(Method.WEIGHT_ONLY, {"mel": Compare.VALUES},
                                   padded_items=True),
        "vocos": GraphRecipe(Method.WEIGHT_ONLY, {"waveform": Compare.VALUES},
                             padded_items=True),
    },
}

def pad_values(rec: GraphRecipe, constants: dict[str, Any]) -> dict[str, float]:
    return {name: float(constants[key]) for name, key in rec.pad_constants.items()}


GENERIC = GraphRecipe(Method.STATIC, {})


def recipe(kind: str, graph: str) -> GraphRecipe:
    """The defaults for one graph; an unknown graph gets generic ones (compare nothing)."""
    return RECIPES.get(kind, {}).get(graph, GENERIC)
