"""The continuous-batching TTS engine on a real tiny ChatTTS pack (ORT, fp32).

Batch invariance: requests that join a running batch at different steps produce exactly
the tokens of their solo runs; cancellation frees the slot at the next step; both KV-cache
strategies agree; the whole ORT pipeline equals the package's PyTorch pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from batcher.steps import FinishReason, SeqStatus, StepConfig
from service.runtime.packs import load_pack
from service.runtime.sessions import RuntimeConfig
from service.tts.engine import EngineConfig, GenerationEngine, KVCacheKind
from service.tts.jobs import EngineStats, GenerationJob, GenerationResult, PassKind
from service.tts.model import TTSGraphs
from service.tts.sampling import SamplingParams
from tests.chattts_fixtures import chattts_models_dir, chattts_pack_dir  # noqa: F401
from tests.tools import require_module

TEXTS = ["hello world", "a much longer sentence, to speak here.", "hi", "one two three",
         "x y z"]


@pytest.fixture(scope="module")
def graphs(chattts_pack_dir: Path) -> TTSGraphs:  # noqa: F811
    pack = load_pack(chattts_pack_dir, expected_kind="chattts")
    return TTSGraphs.open(pack, "fp32", RuntimeConfig(provider="cpu", intra_op_threads=1))


def prompt_ids(graphs: TTSGraphs, seed: int, length: int) -> np.ndarray:
    """A code-pass-shaped prompt of random text ids (the engine does not care what they say)."""
    rng = np.random.default_rng(seed)
    return rng.integers(5, 2000, size=length).astype(np.int64)


def make_job(graphs: TTSGraphs, i: int, max_new: int, *, temperature: float = 1.0,
             kind: PassKind = PassKind.CODE) -> GenerationJob:
    params = SamplingParams(temperature=temperature, top_p=0.9, top_k=50,
                            repetition_penalty=1.05)
    spk = np.random.default_rng(100 + i).standard_normal(graphs.c.spk_emb_dim).astype(np.float32)
    return GenerationJob(
        request_id=f"req{i}", kind=kind, prompt_ids=prompt_ids(graphs, i, 4 + 3 * i),
        spk_emb=spk, params=params, max_new_tokens=max_new, seed=1000 + i,
    )


async def with_engine(graphs: TTSGraphs, config: EngineConfig,
                      body: Callable[[GenerationEngine], Awaitable[object]]) -> object:
    engine = GenerationEngine(graphs, config)
    engine.start()
    try:
        return await body(engine)
    finally:
        await engine.stop()


async def wait_steps(engine: GenerationEngine, steps: int) -> None:
    await asyncio.sleep(0)  # let tasks created just before start
    while engine.stats().steps < steps:
        await asyncio.sleep(0.0005)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.0005)


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def solo_results(graphs: TTSGraphs, jobs: list[GenerationJob]) -> list[GenerationResult]:
    async def body(engine: GenerationEngine) -> list[GenerationResult]:
        return [await engine.generate(job) for job in jobs]

    return run(with_engine(graphs, EngineConfig(step=StepConfig(max_active=1)), body))  # type: ignore[return-value]


def staggered(graphs: TTSGraphs, jobs: list[GenerationJob], config: EngineConfig,
              join_every: int = 6) -> tuple[list[GenerationResult], EngineStats]:
    """Each job is submitted `join_every` steps after the previous one was admitted, so
    every job joins a running batch at its own step."""

    async def body(engine: GenerationEngine) -> tuple[list[GenerationResult], EngineStats]:
        tasks = []
        for job in jobs:
            task = asyncio.create_task(engine.generate(job))
            tasks.append(task)
            await wait_for(lambda j=job, t=task: t.done() or  # type: ignore[misc]
                           engine.scheduler.status(j.request_id) == SeqStatus.RUNNING)
            await wait_steps(engine, engine.stats().steps + join_every)
        results = await asyncio.gather(*tasks)
        return list(results), engine.stats()

    return run(with_engine(graphs, config, body))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def jobs(graphs: TTSGraphs) -> list[GenerationJob]:
    return [make_job(graphs, i, max_new=24 + 9 * i) for i in range(5)]


@pytest.fixture(scope="module")
def solo(graphs: TTSGraphs, jobs: list[GenerationJob]) -> list[GenerationResult]:
    return solo_results(graphs, jobs)


@pytest.mark.parametrize(
    "kv_cache", [KVCacheKind.PRESENT, KVCacheKind.DEVICE, KVCacheKind.PREALLOCATED]
)
def test_joining_mid_flight_gives_solo_outputs(
    graphs: TTSGraphs, jobs: list[GenerationJob], solo: list[GenerationResult],
    kv_cache: KVCacheKind,
) -> None:
    config = EngineConfig(step=StepConfig(max_active=8), kv_cache=kv_cache)
    batched, stats = staggered(graphs, jobs, config)
    assert stats.decode_rows > 1.5 * stats.decode_steps  # really ran as a batch
    assert stats.cache_copies > 0
    lengths = {r.tokens.shape[0] for r in solo}
    assert len(lengths) > 1, "the test needs requests of different lengths"
    for alone, together in zip(solo, batched, strict=True):
        assert alone.finish == together.finish
        np.testing.assert_array_equal(alone.tokens, together.tokens)
        # Hidden states agree to float32 rounding: GEMMs of another batch size may add in
        # another order (~1e-8 here); they never flip a sampled token.
        np.testing.assert_allclose(alone.hidden, together.hidden, rtol=0, atol=1e-5)


def test_tokens_follow_the_seed_and_respect_max_tokens(
    graphs: TTSGraphs, jobs: list[GenerationJob], solo: list[GenerationResult]
) -> None:
    for job, result in zip(jobs, solo, strict=True):
        assert result.tokens.shape[1] == 4 and result.hidden.shape == (
            result.tokens.shape[0], graphs.c.hidden_size)
        if result.finish == FinishReason.MAX_TOKENS:
            assert result.tokens.shape[0] == job.max_new_tokens
        assert (result.tokens < graphs.c.audio_eos).all()  # EOS never part of the codes
    other_seed = GenerationJob(**{**jobs[3].__dict__, "seed": 7})
    again = solo_results(graphs, [jobs[3], other_seed])
    np.testing.assert_array_equal(again[0].tokens, solo[3].tokens)
    assert not np.array_equal(again[1].tokens, solo[3].tokens)


def test_refine_and_code_passes_share_a_batch(graphs: TTSGraphs) -> None:
    mixed = [make_job(graphs, 0, 30), make_job(graphs, 1, 20, kind=PassKind.TEXT),
             make_job(graphs, 2, 25)]
    alone = solo_results(graphs, mixed)
    together, stats = staggered(graphs, mixed, EngineConfig(step=StepConfig(max_active=4)),
                                join_every=3)
    assert stats.decode_rows > stats.decode_steps
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
    assert together[1].tokens.ndim == 1 and together[1].hidden is None


def test_cancellation_frees_the_slot_at_the_next_step(graphs: TTSGraphs) -> None:
    async def body(engine: GenerationEngine) -> None:
        long_job = make_job(graphs, 0, max_new=2000, temperature=0.3)
        long_job = GenerationJob(**{**long_job.__dict__, "params": SamplingParams(
            min_new_tokens=2000)})  # no early EOS: it would hold the only slot for ages
        blocked = make_job(graphs, 1, max_new=5)
        first = asyncio.create_task(engine.generate(long_job))
        await wait_steps(engine, 3)
        second = asyncio.create_task(engine.generate(blocked))
        await wait_for(lambda: engine.scheduler.num_waiting == 1)
        await wait_steps(engine, engine.stats().steps + 3)
        assert not second.done() and engine.scheduler.num_waiting == 1  # no free slot
        steps_at_cancel = engine.stats().steps
        first.cancel()
        result = await asyncio.wait_for(second, 10)
        assert result.tokens.shape[0] == 5 or result.finish == FinishReason.EOS
        # the next step prefilled the waiting one: it ran <= its 5 tokens (+1 in flight)
        assert engine.stats().steps - steps_at_cancel <= 7
        with pytest.raises(asyncio.CancelledError):
            await first
        assert engine.cache.size == 0 and not engine.scheduler.has_requests()

    run(with_engine(graphs, EngineConfig(step=StepConfig(max_active=1)), body))


def test_bad_job_fails_alone(graphs: TTSGraphs) -> None:
    async def body(engine: GenerationEngine) -> None:
        too_long = GenerationJob(**{**make_job(graphs, 0, 10).__dict__,
                                    "max_new_tokens": 10_000})
        with pytest.raises(ValueError, match="exceed"):
            await engine.generate(too_long)
        ok = await engine.generate(make_job(graphs, 1, 3))
        assert ok.tokens.shape[0] <= 3

    run(with_engine(graphs, EngineConfig(step=StepConfig(max_active=2, max_seq_len=512)),
                    body))


@dataclass(frozen=True)
class Reference:
    text: str
    spk_emb: str
    max_new: int
    prompt_ids: np.ndarray
    codes: np.ndarray
    wave: np.ndarray
    """Upstream's whole `_infer` (normalise, code pass, decoder, vocos), before its
    silence stripping."""


@pytest.fixture(scope="module")
def reference(chattts_pack_dir: Path) -> Reference:  # noqa: F811
    """Upstream's PyTorch pipeline with greedy decoding on the tiny weights.

    Upstream samples with torch.multinomial; a near-zero temperature makes its draw the
    argmax of the penalised logits, which is what the engine's greedy mode picks.
    """
    torch = require_module("torch", "the `export` extra: pip install -e '.[export]'")
    from ChatTTS import Chat

    from tests.chattts_fixtures import reference_chat

    chat = reference_chat(chattts_pack_dir)
    torch.manual_seed(4)
    spk = chat.speaker.sample_random()
    text, max_new = "hello world, this is a test.", 40
    params = Chat.InferCodeParams(spk_emb=spk, temperature=1e-6, max_new_token=max_new,
                                  ensure_non_empty=False, show_tqdm=False)
    with torch.no_grad():
        codes = next(chat._infer_code([text], stream=False, device=torch.device("cpu"),
                                      return_hidden=True, params=params)).ids[0].numpy()
        wave = next(chat._infer(
            [text], stream=False, lang=None, skip_refine_text=True, refine_text_only=False,
            use_decoder=True, do_text_normalization=True, do_homophone_replacement=True,
            split_text=False, max_split_batch=4, params_refine_text=Chat.RefineTextParams(),
            params_infer_code=params,
        ))[0]
    prompt = chat.speaker.decorate_code_prompts([text], params.prompt, None, spk)
    input_ids, _, _ = chat.tokenizer.encode(prompt, 4)
    return Reference(text, spk, max_new, input_ids[0, :, 0].numpy(), codes, wave)


def test_ort_engine_matches_the_package_pytorch_pipeline(
    graphs: TTSGraphs, reference: Reference
) -> None:
    """The engine on upstream's own prompt ids and speaker: same codes, same waveform."""
    from service.tts.speaker import decode_spk_emb

    job = GenerationJob(
        request_id="parity", kind=PassKind.CODE, prompt_ids=reference.prompt_ids,
        spk_emb=decode_spk_emb(reference.spk_emb, graphs.c.spk_emb_dim),
        params=SamplingParams(temperature=0.3, top_p=0.7, top_k=20, repetition_penalty=1.05,
                              greedy=True),
        max_new_tokens=reference.max_new, seed=0,
    )
    ours = solo_results(graphs, [job])[0]
    assert ours.tokens.shape[0] > 5
    np.testing.assert_array_equal(ours.tokens, reference.codes)
    wave = graphs.waveform(ours.hidden[None])[0]
    assert wave.shape == reference.wave.shape
    np.testing.assert_allclose(wave, reference.wave, rtol=0, atol=1e-4)


def test_whole_service_pipeline_matches_the_package(
    graphs: TTSGraphs, chattts_pack_dir: Path, reference: Reference  # noqa: F811
) -> None:
    """Text and speaker string in, as a client sends them: the service's normaliser, prompt,
    speaker decoding, engine, decode batcher and post-processing against upstream."""
    from service.pipelines.base import LoadContext
    from service.pipelines.chattts import ChatTTSPipeline, SpeechRequest, peak_limit
    from service.runtime.metrics import Metrics
    from service.settings import Settings

    settings = Settings(_env_file=None, warmup=False)
    ctx = LoadContext(settings=settings, runtime=RuntimeConfig(provider="cpu"),
                      precision="fp32", metrics=Metrics())
    pipeline = ChatTTSPipeline(load_pack(chattts_pack_dir), ctx, graphs)

    async def body() -> object:
        await pipeline.start()
        try:
            return await pipeline.synthesize(SpeechRequest(
                text=reference.text, spk_emb=reference.spk_emb,
                max_new_tokens=reference.max_new, greedy=True))
        finally:
            await pipeline.stop()

    result = run(body())
    np.testing.assert_array_equal(result.codes, reference.codes)  # type: ignore[attr-defined]
    expected = peak_limit(reference.wave)
    np.testing.assert_allclose(result.samples, expected, rtol=0, atol=1e-4)  # type: ignore[attr-defined]


def test_int8_weight_only_keeps_batch_invariance(
    chattts_pack_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """Weight-only int8 (quant's ChatTTS default) has no activation scales shared across
    rows, so joining mid-flight still reproduces the solo tokens."""
    import shutil

    from quant.__main__ import main as quantize

    pack_dir = tmp_path / "chattts"
    shutil.copytree(chattts_pack_dir, pack_dir)
    assert quantize([str(pack_dir), "--to", "int8"]) == 0
    pack = load_pack(pack_dir, expected_kind="chattts")
    assert pack.graph("gpt", "int8")[1].quantization  # really the quantised graph
    graphs = TTSGraphs.open(pack, "int8", RuntimeConfig(provider="cpu", intra_op_threads=1))
    jobs = [make_job(graphs, i, max_new=20 + 7 * i) for i in range(4)]
    alone = solo_results(graphs, jobs)
    together, _ = staggered(graphs, jobs, EngineConfig(step=StepConfig(max_active=4)),
                            join_every=4)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)


# -- flow control and deadlines ------------------------------------------------------------


def _endless(graphs: TTSGraphs, i: int, tokens: int) -> GenerationJob:
    job = make_job(graphs, i, max_new=tokens)
    return GenerationJob(**{**job.__dict__, "params": SamplingParams(min_new_tokens=tokens)})


def test_a_stream_that_is_not_read_pauses_frees_its_slot_and_resumes_exactly(
        graphs: TTSGraphs, jobs: list[GenerationJob], solo: list[GenerationResult]) -> None:
    """One slot. Stream A is not read: at 6 unread tokens it pauses and leaves the batch,
    so job B runs to the end meanwhile; then A is read and its tokens are exactly a solo
    run's, though it was parked and rejoined (and paused again and again when read)."""

    async def body(engine: GenerationEngine) -> tuple[list[object], GenerationResult,
                                                      EngineStats]:
        stream = engine.open_stream(jobs[4], max_buffered=6)
        await wait_for(lambda: engine.scheduler.num_paused == 1)
        # 6, plus the steps the engine ran before it saw the request (how many depends on
        # how fast the event loop passed it on): what is fixed is that a paused row gets
        # no more tokens while another job runs to its end in its slot
        await asyncio.sleep(0)  # the last step's tokens, posted before the pause, land
        held = stream.buffered
        assert held >= 6
        other = await asyncio.wait_for(engine.generate(jobs[2]), 20)
        assert engine.scheduler.num_paused == 1 and stream.buffered == held
        items = []
        async for item in stream:
            items.append(item)
            await asyncio.sleep(0.002)  # a slow reader: it keeps pausing and resuming
        await stream.aclose()
        return items, other, engine.stats()

    items, other, stats = run(with_engine(  # type: ignore[misc]
        graphs, EngineConfig(step=StepConfig(max_active=1)), body))
    tokens = np.stack([i.token for i in items[:-1]])  # type: ignore[attr-defined]
    result = items[-1]
    assert isinstance(result, GenerationResult)
    np.testing.assert_array_equal(tokens, solo[4].tokens)
    np.testing.assert_array_equal(result.tokens, solo[4].tokens)
    np.testing.assert_array_equal(other.tokens, solo[2].tokens)
    assert stats.paused >= 2 and stats.aborted == 0


@pytest.mark.parametrize("kv_cache", [KVCacheKind.PRESENT, KVCacheKind.PREALLOCATED])
def test_parked_rows_rejoin_a_running_batch_exactly(
        graphs: TTSGraphs, jobs: list[GenerationJob], solo: list[GenerationResult],
        kv_cache: KVCacheKind) -> None:
    async def body(engine: GenerationEngine) -> list[GenerationResult]:
        streams = [engine.open_stream(job, max_buffered=5 + 3 * i)
                   for i, job in enumerate(jobs)]
        out: list[GenerationResult] = []
        for i, stream in enumerate(streams):  # read them one after another: the others wait
            async for item in stream:
                if isinstance(item, GenerationResult):
                    out.append(item)
                elif i % 2:
                    await asyncio.sleep(0.001)
            await stream.aclose()
        return out

    results = run(with_engine(graphs, EngineConfig(step=StepConfig(max_active=3),
                                                   kv_cache=kv_cache), body))
    for alone, streamed in zip(solo, results, strict=True):  # type: ignore[call-overload]
        np.testing.assert_array_equal(alone.tokens, streamed.tokens)


def test_pauses_beyond_the_cap_are_refused_and_those_run_on(graphs: TTSGraphs) -> None:
    async def body(engine: GenerationEngine) -> tuple[int, list[int]]:
        streams = [engine.open_stream(_endless(graphs, i, 60), max_buffered=4)
                   for i in range(3)]
        await wait_for(lambda: all(s.buffered >= 60 or engine.scheduler.status(s.request_id)
                                   == SeqStatus.PAUSED for s in streams))
        paused = engine.scheduler.num_paused
        for s in streams:
            s.close()
        return paused, [s.buffered for s in streams]

    paused, buffered = run(with_engine(  # type: ignore[misc]
        graphs, EngineConfig(step=StepConfig(max_active=3, max_paused=1)), body))
    assert paused == 1 and sorted(buffered)[-2:] == [60, 60]


def test_closing_a_paused_stream_aborts_it(graphs: TTSGraphs) -> None:
    async def body(engine: GenerationEngine) -> EngineStats:
        stream = engine.open_stream(_endless(graphs, 0, 500), max_buffered=4)
        await wait_for(lambda: engine.scheduler.num_paused == 1)
        await stream.aclose()
        await wait_for(lambda: engine.active == 0)
        assert not engine._parked  # the parked cache is dropped with it
        return engine.stats()

    stats = run(with_engine(graphs, EngineConfig(step=StepConfig(max_active=1)), body))
    assert stats.aborted == 1  # type: ignore[attr-defined]


@dataclass
class ManualClock:
    """The engine's deadline clock, moved by the test: deadlines pass when the test says so,
    not when the machine has been slow or fast enough."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_job_that_gets_no_slot_by_its_deadline_never_runs(graphs: TTSGraphs) -> None:
    """Ordered by events: the hog holds the only slot until the test cancels it (its token
    budget is the whole sequence length), the late job waits through steps while its
    deadline has not passed, and expires at the next step once the clock passes it."""
    from batcher import DeadlineExceeded

    clock = ManualClock()
    hog_tokens = StepConfig().max_seq_len - 8

    async def body(engine: GenerationEngine) -> None:
        hog = asyncio.create_task(engine.generate(_endless(graphs, 0, hog_tokens)))
        await wait_steps(engine, 2)
        late = GenerationJob(**{**make_job(graphs, 1, 5).__dict__,
                                "start_by": clock.now + 0.2})
        waiting = asyncio.create_task(engine.generate(late))
        await wait_for(lambda: engine.scheduler.status(late.request_id) == SeqStatus.WAITING)
        await wait_steps(engine, engine.stats().steps + 3)  # steps pass, the deadline has not
        assert not waiting.done() and engine.stats().expired == 0
        clock.now += 0.2
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(waiting, 30)
        assert not hog.done(), "the hog must hold its slot until cancelled"
        assert engine.stats().expired == 1
        # one that gets its slot in time runs on past its deadline: only the start counts
        hog.cancel()
        on_time = GenerationJob(**{**_endless(graphs, 2, 120).__dict__,
                                   "start_by": clock.now + 0.5})
        running = asyncio.create_task(engine.generate(on_time))
        await wait_for(lambda: running.done() or
                       engine.scheduler.status(on_time.request_id) == SeqStatus.RUNNING)
        clock.now += 10.0
        result = await asyncio.wait_for(running, 30)
        assert result.tokens.shape[0] == 120
        assert engine.stats().expired == 1

    async def with_clock() -> None:
        engine = GenerationEngine(graphs, EngineConfig(step=StepConfig(max_active=1)),
                                  clock=clock)
        engine.start()
        try:
            await body(engine)
        finally:
            await engine.stop()

    run(with_clock())


def test_stop_does_not_wait_for_paused_streams(graphs: TTSGraphs) -> None:
    """At shutdown a paused stream's reader is gone: stop ends it instead of hanging."""
    from batcher import BatcherClosed

    async def body() -> None:
        engine = GenerationEngine(graphs, EngineConfig(step=StepConfig(max_active=1)))
        engine.start()
        stream = engine.open_stream(_endless(graphs, 0, 500), max_buffered=4)
        await wait_for(lambda: engine.scheduler.num_paused == 1)
        await asyncio.wait_for(engine.stop(), 10)
        with pytest.raises(BatcherClosed):
            async for _ in stream:
                pass
        await stream.aclose()

    run(body())
