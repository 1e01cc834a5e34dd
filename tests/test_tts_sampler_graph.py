"""ChatTTS's sampling as an ONNX graph (the CUDA path) vs the numpy sampler: the same token
for every row across temperatures, penalties, top-p/top-k, EOS masking and greedy rows,
and in the engine: batched == alone, and equal to the numpy sampler's tokens."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.steps import StepConfig
from service.tts.engine import EngineConfig, KVCacheKind
from service.tts.jobs import GenerationJob, GenerationResult
from service.tts.model import TTSGraphs
from service.tts.sampler_graph import GraphSampler, penalty_slots
from service.tts.sampling import SamplingParams, apply_repetition_penalty, sample_rows
from tests.chattts_fixtures import chattts_models_dir, chattts_pack_dir  # noqa: F401
from tests.test_tts_engine import graphs, jobs, solo, staggered  # noqa: F401

VOCAB, EOS = 626, 625


@pytest.fixture(scope="module")
def sampler() -> GraphSampler:
    return GraphSampler("cpu")


def _case(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray],
                                             list[SamplingParams], list[int], np.ndarray]:
    rows = int(rng.integers(1, 40))
    logits = (rng.standard_normal((rows, VOCAB)) * rng.uniform(0.5, 6)).astype(np.float32)
    params = [SamplingParams(
        temperature=float(rng.choice([0.3, 0.7, 1.0])),
        top_p=[None, 0.7, 0.95, 1.0][int(rng.integers(4))],
        top_k=[None, 20, 3, 1][int(rng.integers(4))],
        repetition_penalty=float(rng.choice([1.0, 1.05, 1.3])),
        min_new_tokens=int(rng.integers(0, 3)), greedy=bool(rng.random() < 0.2))
        for _ in range(rows)]
    histories = [rng.integers(0, VOCAB, int(rng.integers(0, 40))) for _ in range(rows)]
    steps = [int(rng.integers(0, 5)) for _ in range(rows)]
    return logits, histories, params, steps, rng.random(rows)


def test_graph_sampler_draws_the_numpy_samplers_tokens(sampler: GraphSampler) -> None:
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(60):
        logits, histories, params, steps, uniforms = _case(rng)
        want = sample_rows(logits, histories, params, steps, uniforms, eos_id=EOS)
        got = sampler.sample_rows(logits, histories, params, steps, uniforms, eos_id=EOS)
        np.testing.assert_array_equal(got, want)
        total += len(want)
    assert total > 1000


def test_masked_eos_is_never_drawn_and_greedy_is_the_argmax(sampler: GraphSampler) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((64, VOCAB)).astype(np.float32)
    logits[:, EOS] = 50.0  # EOS would win every draw
    params = [SamplingParams(min_new_tokens=10)] * 32 + [SamplingParams(greedy=True)] * 32
    ids = sampler.sample_rows(logits, [np.zeros(0, np.int64)] * 64, params, [0] * 64,
                              rng.random(64), eos_id=EOS)
    assert not (ids[:32] == EOS).any() and (ids[32:] == EOS).all()


def test_penalty_slots_apply_numpys_factors() -> None:
    rng = np.random.default_rng(2)
    histories = [rng.integers(0, 30, n) for n in (0, 5, 16, 40)]
    penalties = np.array([1.05, 1.3, 1.05, 2.0], np.float32)
    logits = rng.standard_normal((4, 30)).astype(np.float32)
    ids, factors = penalty_slots(histories, penalties, 30)
    wide = np.concatenate([logits, np.zeros((4, 1), np.float32)], axis=1)
    picked = np.take_along_axis(wide, ids, axis=1)
    np.put_along_axis(wide, ids, np.where(picked < 0, picked * factors, picked / factors), 1)
    np.testing.assert_array_equal(wide[:, :30],
                                  apply_repetition_penalty(logits, histories, penalties))


@pytest.mark.parametrize("kv_cache", [KVCacheKind.PRESENT, KVCacheKind.DEVICE])
def test_engine_with_the_graph_sampler_gives_solo_numpy_tokens(
    graphs: TTSGraphs, jobs: list[GenerationJob],  # noqa: F811
    solo: list[GenerationResult], kv_cache: KVCacheKind,  # noqa: F811
) -> None:
    """Requests joining a running batch, sampled by the graph, get exactly the tokens
    each gets alone with the numpy sampler."""
    on_graph = TTSGraphs(graphs.runners, graphs.c, GraphSampler("cpu"))
    batched, stats = staggered(on_graph, jobs,
                               EngineConfig(step=StepConfig(max_active=8), kv_cache=kv_cache))
    assert stats.decode_rows > 1.5 * stats.decode_steps
    for alone, together in zip(solo, batched, strict=True):
        np.testing.assert_array_equal(alone.tokens, together.tokens)
