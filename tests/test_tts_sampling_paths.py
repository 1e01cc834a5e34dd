"""The sampler's two ways to filter (service/tts/sampling.py): sorting only the k best
logits must keep what sorting the whole row keeps, and the repetition penalty scaled in
place must equal the dense one bit for bit. (Parity with upstream ChatTTS itself is
tests/test_tts_sampling.py, which needs torch.)"""

from __future__ import annotations

import numpy as np

from service.tts.sampling import (
    _top_full_sort,
    _top_k_best,
    apply_repetition_penalty,
)

VOCAB = 626  # ChatTTS's code vocabulary


def test_sorting_the_k_best_keeps_what_the_full_sort_keeps() -> None:
    """Over 38,400 rows of every shape of distribution the two differ only where tokens
    tie at top-p's cut: the full sort drops whichever its sort put first, the k-best
    filter keeps them all (as top-k keeps its ties)."""
    rng = np.random.default_rng(0)
    rows = differing = 0
    for trial in range(150):
        logits = (rng.standard_normal((256, VOCAB)) * rng.choice([1.0, 3.0, 10.0, 30.0])
                  ).astype(np.float32)
        if trial % 3 == 0:  # a few tokens hold nearly all the mass
            logits[:, :5] += 20
        if trial % 5 == 0:  # ties, as a quantised or saturated model makes them
            logits = np.round(logits)
        top_p = rng.choice([0.01, 0.3, 0.7, 0.9, 1.0], size=256).astype(np.float32)
        k = rng.choice([3, 20, 50, 64], size=256).astype(np.int64)
        full, best = _top_full_sort(logits, top_p, k, 3), _top_k_best(logits, top_p, k, 3)
        rows += len(logits)
        for r in np.nonzero((np.isinf(full) != np.isinf(best)).any(axis=-1))[0]:
            differing += 1
            extra = np.isinf(full[r]) & ~np.isinf(best[r])
            assert not (~np.isinf(full[r]) & np.isinf(best[r])).any(), "k-best dropped more"
            kept_values = set(logits[r][~np.isinf(full[r])].tolist())
            assert set(logits[r][extra].tolist()) <= kept_values, "not a tie at the cut"
    assert rows == 38_400 and differing > 0  # the rounded trials tie at the cut


def test_the_penalty_scaled_in_place_equals_the_dense_one_bit_for_bit() -> None:
    def dense(logits: np.ndarray, histories: list[np.ndarray], penalties: np.ndarray
              ) -> np.ndarray:
        freq = np.zeros(logits.shape, np.float32)
        for r, h in enumerate(histories):
            np.add.at(freq[r], np.asarray(h[-16:], np.int64), 1.0)
        alpha = np.power(penalties[:, None], freq).astype(np.float32)
        return np.where(logits < 0, logits * alpha, logits / alpha).astype(np.float32)

    rng = np.random.default_rng(1)
    for _ in range(100):
        count = int(rng.integers(1, 200))
        logits = (rng.standard_normal((count, VOCAB)) * 3).astype(np.float32)
        histories = [rng.integers(0, int(rng.integers(1, VOCAB)), size=int(rng.integers(0, 40)))
                     for _ in range(count)]
        penalties = rng.choice([1.0, 1.05, 1.3, 2.0], size=count).astype(np.float32)
        ours = apply_repetition_penalty(logits, histories, penalties)
        assert np.array_equal(ours.view(np.uint32), dense(logits, histories, penalties)
                              .view(np.uint32))
