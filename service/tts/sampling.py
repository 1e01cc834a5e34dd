"""ChatTTS's token sampling in numpy, in upstream's order, with a per-request RNG.

Order (ChatTTS `GPT.generate` with `gen_logits`): logits / temperature -> repetition
penalty over the last 16 generated tokens -> top-p -> top-k (both keep >= 3 tokens) ->
EOS masked while under `min_new_tokens` -> softmax -> one multinomial draw per row.
A code step has 4 rows (one per codebook, each penalised by its own codebook's history);
a refine-text step has 1.

Reproduced quirk: upstream's penalty means to exempt ids >= `num_code` (EOS) from the
penalty, but its size check tests the number of ROWS, not the vocabulary, so in practice
EOS is penalised like any other token. We penalise it too (the small-batch behaviour,
which is also the only batch-invariant one).

Draws use the request's own `numpy.random.Generator` (inverse CDF with one uniform per
row), so a request's tokens depend only on its seed and its own logits, never on what
else shares the batch. Everything is float32 like upstream's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPETITION_WINDOW = 16
MIN_TOKENS_TO_KEEP = 3


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.3
    top_p: float | None = 0.7
    top_k: int | None = 20
    repetition_penalty: float = 1.05
    window: int = REPETITION_WINDOW
    min_new_tokens: int = 0
    greedy: bool = False
    """Argmax of the filtered logits instead of a draw (tests, parity checks)."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return logits / np.float32(temperature)


def apply_repetition_penalty(
    logits: np.ndarray, history: np.ndarray, penalty: float, window: int = REPETITION_WINDOW
) -> np.ndarray:
    """Scale each token's logit by penalty**count, count over the row's last `window` ids.

    `history` is [rows, t] (t may be 0). Negative logits are multiplied, others divided,
    as upstream does (EOS included: see the module note).
    """
    if penalty == 1.0 or history.shape[1] == 0:
        return logits
    recent = history[:, -window:]
    rows, vocab = logits.shape
    freq = np.zeros((rows, vocab), dtype=np.int64)
    np.add.at(freq, (np.repeat(np.arange(rows), recent.shape[1]), recent.reshape(-1)), 1)
    alpha = np.power(np.float32(penalty), freq.astype(np.float32)).astype(np.float32)
    return np.where(logits < 0, logits * alpha, logits / alpha).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def apply_top_p(logits: np.ndarray, top_p: float, keep: int = MIN_TOKENS_TO_KEEP) -> np.ndarray:
    """Drop the least likely tokens whose cumulative probability stays <= 1 - top_p."""
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending, like upstream
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(_softmax(sorted_logits), axis=-1, dtype=np.float32)
    remove_sorted = cumulative <= np.float32(1.0 - top_p)
    remove_sorted[..., -keep:] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, np.float32(-np.inf), logits).astype(np.float32)


def apply_top_k(logits: np.ndarray, top_k: int, keep: int = MIN_TOKENS_TO_KEEP) -> np.ndarray:
    """Keep the k best tokens (ties with the k-th kept), k >= `keep`."""
    k = min(max(top_k, keep), logits.shape[-1])
    kth = -np.partition(-logits, k - 1, axis=-1)[..., k - 1 : k]
    return np.where(logits < kth, np.float32(-np.inf), logits).astype(np.float32)


def filter_logits(
    logits: np.ndarray,
    history: np.ndarray,
    params: SamplingParams,
    *,
    step: int,
    eos_id: int,
) -> np.ndarray:
    """Upstream's processing chain on [rows, vocab] float32 logits for generated step `step`."""
    out = apply_temperature(logits.astype(np.float32, copy=False), params.temperature)
    out = apply_repetition_penalty(out, history, params.repetition_penalty, params.window)
    if params.top_p is not None:
        out = apply_top_p(out, params.top_p)
    if params.top_k is not None:
        out = apply_top_k(out, params.top_k)
    if step < params.min_new_tokens:
        out = out.copy()
        out[:, eos_id] = -np.inf
    return out


def probabilities(filtered: np.ndarray) -> np.ndarray:
    return _softmax(filtered)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row by inverse CDF: a token with probability 0 is never chosen."""
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    targets = rng.random(probs.shape[0]) * cdf[:, -1]
    chosen = (cdf <= targets[:, None]).sum(axis=-1)
    return np.minimum(chosen, probs.shape[-1] - 1).astype(np.int64)


def sample(
    logits: np.ndarray,
    history: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    *,
    step: int,
    eos_id: int,
) -> np.ndarray:
    """Next token of each row: [rows, vocab] logits, [rows, t] history -> [rows] ids."""
    filtered = filter_logits(logits, history, params, step=step, eos_id=eos_id)
    if params.greedy:
        return filtered.argmax(axis=-1).astype(np.int64)
    return draw(probabilities(filtered), rng)
