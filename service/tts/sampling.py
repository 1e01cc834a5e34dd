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

Top-p and top-k keep at most k tokens, so a row whose k is small (ChatTTS's 20 of 626)
sorts only its k best logits (`_top_k_best`: 2x faster than sorting the row at 8-64
sequences a step); the kept tokens are the full sort's but where tokens tie at top-p's cut
(tests/test_tts_sampling_paths.py). The repetition penalty scales only the penalised ids.

Draws use the request's own `numpy.random.Generator` (inverse CDF with one uniform per
row), so a request's tokens depend only on its seed and its own logits, never on what
else shares the batch. Everything is float32 like upstream's tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPETITION_WINDOW = 16
MIN_TOKENS_TO_KEEP = 3
MIN_TEMPERATURE = 1e-5
"""The smallest temperature taken (ChatTTS's web UI slider starts here). Logits are
float32: a temperature of ~1e-38 and below is 0 there, the division makes inf and NaN, and
the sampler then drew one token until the length cap (a 5e-324 gave 2,048 tokens)."""
MAX_TEMPERATURE = 5.0


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
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], "
                             f"got {self.temperature}")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


Histories = Sequence[np.ndarray] | np.ndarray
"""Each row's generated ids: a sequence of 1-D arrays (oldest first, any length), or one
[rows, t] array; ids < 0 are empty places (a sequence's window before it is full)."""


class RowParams:
    """Each row's sampling parameters and step as arrays. Rows of one request share its
    params object, so each attribute is read once per distinct object, not once per row."""

    def __init__(self, params: Sequence[SamplingParams], steps: Sequence[int]) -> None:
        if len(steps) != len(params):
            raise ValueError(f"{len(steps)} steps for {len(params)} rows")
        self.steps = np.asarray(steps, dtype=np.int64)
        """Tokens each row's sequence has generated before this one."""
        distinct: dict[int, int] = {}
        self._index = np.array([distinct.setdefault(id(p), len(distinct)) for p in params],
                               dtype=np.int64)
        self._params = list({id(p): p for p in params}.values())

    @property
    def window(self) -> int:
        return self._params[0].window if self._params else REPETITION_WINDOW

    def values(self, attr: str, off: float, dtype: type = np.float32) -> np.ndarray:
        """`attr` of every row, `off` where it is None."""
        per: np.ndarray = np.array([off if getattr(p, attr) is None else getattr(p, attr)
                        for p in self._params], dtype=dtype)
        return per[self._index] if per.size else per

    def eos_masked(self) -> np.ndarray:
        """Rows whose EOS is masked: still under their `min_new_tokens`."""
        return self.steps < self.values("min_new_tokens", 0, np.int64)


def penalised_ids(histories: Histories, penalties: np.ndarray, vocab: int,
                  window: int = REPETITION_WINDOW
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, token, factor) for every distinct id among each row's last `window` ids, rows
    in order: the only logits the penalty changes (penalty**0 is exactly 1), and
    `penalty ** count` in float32. Only counts matter, so a row's ids may come in any
    order (the engine keeps each window as a ring: `LiveSequence.history`)."""
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        recent = histories[:, -window:].astype(np.int64, copy=False)
        row_of = np.repeat(np.arange(recent.shape[0]), recent.shape[1])
        ids = recent.ravel()
    else:
        rows = [np.asarray(h[-window:], dtype=np.int64) for h in histories]
        row_of = np.repeat(np.arange(len(rows)), [len(h) for h in rows])
        ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    given = ids >= 0
    row_of, ids = row_of[given], ids[given]
    if row_of.size == 0:
        return row_of, row_of, np.ones(0, np.float32)
    keys, counts = np.unique(row_of * vocab + ids, return_counts=True)
    row, token = keys // vocab, keys % vocab
    return row, token, np.power(penalties[row], counts.astype(np.float32)).astype(np.float32)


def apply_repetition_penalty(
    logits: np.ndarray, histories: Histories, penalties: np.ndarray,
    window: int = REPETITION_WINDOW,
) -> np.ndarray:
    """Scale each token's logit by penalty**count, count over the row's last `window` ids.

    `histories[r]` holds row r's generated ids (any length). Negative logits are
    multiplied, others divided, as upstream does (EOS included: see the module note).
    Only the penalised ids are touched, in place of a copy.
    """
    if np.all(penalties == 1.0):
        return logits
    row, token, alpha = penalised_ids(histories, penalties, logits.shape[-1], window)
    if row.size == 0:
        return logits
    values = logits[row, token]
    out = logits.astype(np.float32, copy=True)
    out[row, token] = np.where(values < 0, values * alpha, values / alpha)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


PARTIAL_SORT_K = 64
"""Rows whose top-k is at most this sort only their k best logits (`_top_k_best`); the
others sort the whole row (`_top_full_sort`)."""


def apply_top_p_top_k(logits: np.ndarray, top_p: np.ndarray, top_k: np.ndarray,
                      keep: int = MIN_TOKENS_TO_KEEP) -> np.ndarray:
    """Top-p then top-k (both keep >= `keep`), per row.

    Top-p drops the least likely tokens whose cumulative probability (ascending) stays
    <= 1 - top_p; top-k then keeps the k best of what is left (ties with the k-th kept).
    `top_p` 1.0 and `top_k` >= vocab switch them off. Which way a row is computed depends
    on its own top-k only, so a row's result never depends on its batch-mates.
    """
    vocab = logits.shape[-1]
    k = np.minimum(np.maximum(top_k.astype(np.int64), keep), vocab)
    small = k <= min(PARTIAL_SORT_K, vocab // 4)
    if small.all():
        return _top_k_best(logits, top_p, k, keep)
    if not small.any():
        return _top_full_sort(logits, top_p, k, keep)
    out = np.empty_like(logits)
    out[small] = _top_k_best(logits[small], top_p[small], k[small], keep)
    out[~small] = _top_full_sort(logits[~small], top_p[~small], k[~small], keep)
    return out


def _top_full_sort(logits: np.ndarray, top_p: np.ndarray, k: np.ndarray, keep: int
                   ) -> np.ndarray:
    """Upstream's way: sort the row ascending, cumulative probabilities, unsort."""
    rows, vocab = logits.shape
    order = np.argsort(logits, axis=-1)  # ascending, like upstream's torch.sort
    ranked = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(_softmax(ranked), axis=-1, dtype=np.float32)
    drop = cumulative <= (np.float32(1.0) - top_p)[:, None]
    drop[:, vocab - keep:] = False
    ranked = np.where(drop, np.float32(-np.inf), ranked)
    kth = ranked[np.arange(rows), vocab - k][:, None]
    ranked = np.where(ranked < kth, np.float32(-np.inf), ranked)
    out = np.empty_like(logits)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def _top_k_best(logits: np.ndarray, top_p: np.ndarray, k: np.ndarray, keep: int
                ) -> np.ndarray:
    """The same filter from the k best logits of each row (ChatTTS's k is 20 of 626):
    whatever top-p keeps beyond them top-k drops, so only they are sorted, and a token's
    ascending cumulative probability is 1 - the probability of the tokens above it.

    Same kept tokens as `_top_full_sort` but where float32 sums taken in the other order
    straddle 1 - top_p, or where tokens tie at top-p's cut (the full sort keeps whichever
    the sort put last; this keeps all of them, as top-k does its ties)."""
    rows, vocab = logits.shape
    width = int(k.max())
    values = np.partition(logits, vocab - width, axis=-1)[:, vocab - width:]
    values = -np.sort(-values, axis=-1)  # descending
    top = logits.max(axis=-1, keepdims=True)
    total = np.exp(logits - top).sum(axis=-1, keepdims=True, dtype=np.float32)
    probs = (np.exp(values - top) / total).astype(np.float32)
    above = np.cumsum(probs, axis=-1, dtype=np.float32) - probs  # mass of better tokens
    # top-p 1 drops only tokens of probability 0 (cumulative <= 0), as the full sort does
    kept_by_p = np.maximum(np.where(top_p >= 1.0, (probs > 0).sum(axis=-1),
                                    (above < top_p[:, None]).sum(axis=-1)), keep)
    kept = np.minimum(kept_by_p, k)
    cut = values[np.arange(rows), kept - 1][:, None]
    return np.where(logits >= cut, logits, np.float32(-np.inf)).astype(np.float32)


def filter_rows(
    logits: np.ndarray,
    histories: Histories,
    params: Sequence[SamplingParams],
    steps: Sequence[int],
    *,
    eos_id: int,
) -> np.ndarray:
    """Upstream's chain on [rows, vocab] logits; row r has its own params and history.

    Every operation is row-wise, so a row's result does not depend on the other rows.
    """
    return _filter(logits, histories, RowParams(params, steps), eos_id)


def _filter(logits: np.ndarray, histories: Histories, rows: RowParams,
            eos_id: int) -> np.ndarray:
    out = logits.astype(np.float32, copy=True)
    out /= rows.values("temperature", 1.0)[:, None]
    out = apply_repetition_penalty(out, histories, rows.values("repetition_penalty", 1.0),
                                   rows.window)
    top_p = rows.values("top_p", 1.0)
    top_k = rows.values("top_k", float(out.shape[-1]))
    if np.any(top_p < 1.0) or np.any(top_k < out.shape[-1]):
        out = apply_top_p_top_k(out, top_p, top_k)
    out[rows.eos_masked(), eos_id] = -np.inf
    return out


def probabilities(filtered: np.ndarray) -> np.ndarray:
    return _softmax(filtered)


def draw_rows(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One token per row by inverse CDF: a token with probability 0 is never chosen."""
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    targets = uniforms * cdf[:, -1]
    chosen = (cdf <= targets[:, None]).sum(axis=-1)
    return np.minimum(chosen, probs.shape[-1] - 1).astype(np.int64)


def sample_rows(
    logits: np.ndarray,
    histories: Histories,
    params: Sequence[SamplingParams],
    steps: Sequence[int],
    uniforms: np.ndarray,
    *,
    eos_id: int,
) -> np.ndarray:
    """Next id of every row; `uniforms[r]` in [0, 1) comes from row r's request RNG
    (ignored for greedy rows)."""
    rows = RowParams(params, steps)
    filtered = _filter(logits, histories, rows, eos_id)
    ids = draw_rows(probabilities(filtered), uniforms)
    greedy = rows.values("greedy", False, bool)
    if greedy.any():
        ids[greedy] = filtered[greedy].argmax(axis=-1)
    return ids


# -- one request's rows (all rows share params and the step) -------------------------

def filter_logits(
    logits: np.ndarray, history: np.ndarray, params: SamplingParams, *, step: int, eos_id: int
) -> np.ndarray:
    """[rows, vocab] logits, [rows, t] history (t may be 0) -> filtered logits."""
    rows = logits.shape[0]
    return filter_rows(logits, list(history), [params] * rows, [step] * rows, eos_id=eos_id)


def sample(
    logits: np.ndarray,
    history: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    *,
    step: int,
    eos_id: int,
) -> np.ndarray:
    """Next token of each row of one request, drawing from its generator."""
    rows = logits.shape[0]
    uniforms = np.zeros(rows) if params.greedy else np.asarray(rng.random(rows))
    return sample_rows(logits, list(history), [params] * rows, [step] * rows, uniforms,
                       eos_id=eos_id)
