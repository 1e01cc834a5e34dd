"""The numpy sampler against ChatTTS's own logits processors (as `gen_logits` configures them)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.tts.jobs import NO_TOKEN, GenerationJob, LiveSequence, PassKind
from service.tts.sampling import (
    MIN_TEMPERATURE,
    SamplingParams,
    apply_repetition_penalty,
    draw_rows,
    filter_logits,
    filter_rows,
    probabilities,
    sample,
    sample_rows,
)
from tests.tools import require_module

torch = require_module("torch", "the `export` extra: pip install -e '.[export]'")
processors = require_module("ChatTTS.model.processors", "chattts: bash export/install_chattts.sh")

CODE_VOCAB, EOS = 626, 625


def upstream_filter(
    logits: np.ndarray, history: np.ndarray, params: SamplingParams, num_code: int,
    step: int = 99, eos: int = EOS,
) -> np.ndarray:
    """ChatTTS `GPT.generate`'s chain: / temperature, processors then warpers, min_new_token."""
    warpers, procs = processors.gen_logits(
        num_code=num_code, top_P=params.top_p, top_K=params.top_k,
        repetition_penalty=params.repetition_penalty,
    )
    scores = torch.from_numpy(logits.copy())
    scores /= torch.tensor([params.temperature] * logits.shape[0]).view(-1, 1)
    tokens = torch.from_numpy(history)
    for fn in (*procs, *warpers):
        scores = fn(tokens, scores)
    if step < params.min_new_tokens:
        scores[:, eos] = -torch.inf
    return scores.numpy()


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert np.array_equal(np.isinf(ours), np.isinf(theirs)), "different tokens filtered"
    finite = ~np.isinf(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=0, atol=1e-6)
    p_ours = probabilities(ours)
    p_theirs = torch.softmax(torch.from_numpy(theirs), dim=-1).numpy()
    np.testing.assert_allclose(p_ours, p_theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("history_len", [0, 5, 16, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_code_pass_matches_upstream(history_len: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = 4 * 3  # three requests' codebooks, like upstream's flattened batch
    logits = (rng.standard_normal((rows, CODE_VOCAB)) * 3).astype(np.float32)
    history = rng.integers(0, 40, size=(rows, history_len))  # small ids: many repeats
    history[:, -1:] = EOS if history_len else history[:, -1:]  # EOS in the window too
    params = SamplingParams(temperature=0.3, top_p=0.7, top_k=20, repetition_penalty=1.05)
    ours = filter_logits(logits, history, params, step=history_len, eos_id=EOS)
    theirs = upstream_filter(logits, history, params, num_code=CODE_VOCAB - 1)
    assert_same_distribution(ours, theirs)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_p=0.7, top_k=20, repetition_penalty=1.0),
        SamplingParams(temperature=1.0, top_p=0.95, top_k=2, repetition_penalty=1.3),
        SamplingParams(temperature=0.5, top_p=0.01, top_k=50, repetition_penalty=1.2),
        SamplingParams(temperature=0.9, top_p=None, top_k=None, repetition_penalty=2.0),
    ],
)
def test_text_pass_and_other_settings_match_upstream(params: SamplingParams) -> None:
    rng = np.random.default_rng(7)
    vocab = 300
    logits = (rng.standard_normal((1, vocab)) * 4).astype(np.float32)
    history = rng.integers(0, 10, size=(1, 25))
    ours = filter_logits(logits, history, params, step=25, eos_id=vocab - 1)
    theirs = upstream_filter(logits, history, params, num_code=vocab, eos=vocab - 1)
    assert_same_distribution(ours, theirs)


def test_eos_is_penalised_like_upstream() -> None:
    """The quirk: upstream's size check tests rows, so the EOS column is penalised too."""
    logits = np.full((4, CODE_VOCAB), 2.0, dtype=np.float32)
    history = np.full((4, 3), EOS)
    ours = apply_repetition_penalty(logits, list(history), np.full(4, 1.05, np.float32))
    assert ours[0, EOS] == pytest.approx(2.0 / 1.05**3)
    theirs = upstream_filter(
        logits, history, SamplingParams(temperature=1.0, top_p=None, top_k=None),
        num_code=CODE_VOCAB - 1,
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_min_new_tokens_masks_eos() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, CODE_VOCAB)).astype(np.float32)
    logits[:, EOS] = 50.0
    params = SamplingParams(min_new_tokens=2, top_p=None, top_k=None)
    assert np.isinf(filter_logits(logits, np.zeros((4, 0), int), params, step=1, eos_id=EOS)
                    [:, EOS]).all()
    upstream = upstream_filter(logits, np.zeros((4, 0), np.int64), params,
                               num_code=CODE_VOCAB - 1, step=1)
    assert np.isinf(upstream[:, EOS]).all()
    assert (sample(logits, np.zeros((4, 0), int), params, np.random.default_rng(0),
                   step=2, eos_id=EOS) == EOS).all()


def test_draws_follow_the_distribution_and_never_pick_filtered_tokens() -> None:
    probs = np.array([[0.0, 0.2, 0.0, 0.8, 0.0]], dtype=np.float32).repeat(4000, axis=0)
    picks = draw_rows(probs, np.random.default_rng(0).random(len(probs)))
    assert set(np.unique(picks)) == {1, 3}
    assert abs((picks == 3).mean() - 0.8) < 0.03


def test_seeded_rows_are_reproducible_and_independent() -> None:
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((4, CODE_VOCAB)).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=600)
    history = np.zeros((4, 0), int)
    first = [sample(logits, history, params, np.random.default_rng(5), step=0, eos_id=EOS)
             for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    gen = np.random.default_rng(5)
    many = [sample(logits, history, params, gen, step=0, eos_id=EOS) for _ in range(20)]
    assert len({tuple(m) for m in many}) > 1  # the generator advances between steps


def test_greedy_picks_argmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, CODE_VOCAB)).astype(np.float32)
    params = SamplingParams(greedy=True, repetition_penalty=1.0)
    ids = sample(logits, np.zeros((4, 0), int), params, rng, step=0, eos_id=EOS)
    assert np.array_equal(ids, logits.argmax(axis=-1))


def test_invalid_params_rejected() -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=MIN_TEMPERATURE / 2)
    with pytest.raises(ValueError, match="window"):
        SamplingParams(window=0)  # tokens[-0:] would have been the whole history


def test_the_smallest_temperature_still_samples_the_best_token() -> None:
    """At MIN_TEMPERATURE the scaled logits stay finite in float32: no NaN, the draw is
    the argmax (a temperature that is 0 in float32 drew id 0 forever)."""
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((8, CODE_VOCAB)) * 30).astype(np.float32)
    params = SamplingParams(temperature=MIN_TEMPERATURE, repetition_penalty=1.0)
    with np.errstate(divide="raise", over="raise", invalid="raise"):  # underflow is fine
        ids = sample(logits, np.zeros((8, 0), int), params, rng, step=0, eos_id=EOS)
    assert np.array_equal(ids, logits.argmax(axis=-1))
    with pytest.raises(ValueError):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError):
        SamplingParams(top_k=0)


def test_rows_of_a_batch_are_filtered_and_drawn_as_if_alone() -> None:
    """Requests with different settings and histories share one call; no row sees another."""
    rng = np.random.default_rng(21)
    logits = (rng.standard_normal((6, CODE_VOCAB)) * 3).astype(np.float32)
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9, top_k=100),
              SamplingParams(repetition_penalty=1.5, top_p=None), SamplingParams(top_k=None),
              SamplingParams(greedy=True), SamplingParams(min_new_tokens=5)]
    histories = [rng.integers(0, 30, size=n) for n in (0, 3, 16, 40, 7, 2)]
    steps = [len(h) for h in histories]
    uniforms = rng.random(6)
    together = filter_rows(logits, histories, params, steps, eos_id=EOS)
    ids = sample_rows(logits, histories, params, steps, uniforms, eos_id=EOS)
    for r in range(6):
        alone = filter_rows(logits[r:r + 1], histories[r:r + 1], params[r:r + 1], steps[r:r + 1],
                            eos_id=EOS)
        np.testing.assert_array_equal(together[r:r + 1], alone)
        one = sample_rows(logits[r:r + 1], histories[r:r + 1], params[r:r + 1],
                          steps[r:r + 1], uniforms[r:r + 1], eos_id=EOS)
        assert ids[r] == one[0]
    assert ids[4] == together[4].argmax()


def test_a_sequences_penalty_window_is_its_last_tokens_in_any_order() -> None:
    """The engine keeps each sequence's window as a ring (`LiveSequence.history`): after
    any number of tokens it holds exactly the last `window` of them, NO_TOKEN before, and
    the penalty it gives equals the one of the ordered history."""
    params = SamplingParams(repetition_penalty=1.3, window=5)
    job = GenerationJob("r", PassKind.CODE, np.arange(3), None, params, 50, seed=1)
    loop = asyncio.new_event_loop()
    try:
        live = LiveSequence(job, loop.create_future(), loop, 0.0, np.random.default_rng(1))
    finally:
        loop.close()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, CODE_VOCAB)).astype(np.float32)
    assert (live.history() == NO_TOKEN).all()
    for n in range(1, 13):
        live.add_token(rng.integers(0, 8, 4))  # few ids: repeats in the window
        ordered = np.stack(live.tokens[-5:], axis=1)
        ring = live.history()
        assert ring.shape == (4, 5) and (ring == NO_TOKEN).sum() == 4 * max(0, 5 - n)
        for r in range(4):
            assert sorted(ring[r][ring[r] != NO_TOKEN]) == sorted(ordered[r])
        penalties = np.full(4, 1.3, np.float32)
        np.testing.assert_array_equal(
            apply_repetition_penalty(logits, ring, penalties, 5),
            apply_repetition_penalty(logits, list(ordered), penalties, 5))
