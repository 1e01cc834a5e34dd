"""Partials in a live session's per-task result chain, driven by futures (no model, no
socket): a partial cancelled by its final must not let the final overtake the results
before it, and a final short of room takes the partial's place."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from service.live import protocol as p
from service.live.session import LiveContext, LiveSession
from service.live.vad import Endpointer, Utterance
from service.runtime.metrics import Metrics
from service.settings import Settings


class _Gate:
    @asynccontextmanager
    async def admit(self) -> AsyncIterator[float]:
        yield 0.0


def _session(max_pending: int = 4) -> LiveSession:
    settings = Settings(_env_file=None, load_in_background=False,  # type: ignore[call-arg]
                        live_max_pending=max_pending)
    ctx = LiveContext(settings=settings, metrics=Metrics(), cpu=None,  # type: ignore[arg-type]
                      pipelines={}, gates={"clap": _Gate(), "emotion2vec": _Gate()})  # type: ignore[dict-item]
    return LiveSession(None, ctx)  # type: ignore[arg-type]


def _event(index: int, partial: bool) -> p.EmotionUtterance | p.EmotionPartial:
    kind = p.EmotionPartial if partial else p.EmotionUtterance
    return kind(index=index, start_s=0.0, end_s=1.0, granularity="utterance",
                emotion={}, scores=[], chunks=1)


def _when(gate: asyncio.Future[None], event: BaseModel) -> Callable[[], Awaitable[BaseModel]]:
    async def compute() -> BaseModel:
        await gate
        return event
    return compute


def _sent(session: LiveSession) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    while not session._outbox.empty():
        item = session._outbox.get_nowait()
        assert item is not None
        event: dict[str, Any] = json.loads(item.text)
        out.append((event["type"], event["index"]))
    return out


def test_a_cancelled_partial_keeps_the_finals_in_order() -> None:
    async def scenario() -> list[tuple[str, int]]:
        s = _session()
        loop = asyncio.get_running_loop()
        final0, partial1 = loop.create_future(), loop.create_future()
        s._submit("emotion", 0, 0.0, 1.0, 0.0, _when(final0, _event(0, False)))
        s._start_job("emotion", 1, 2.0, 3.0, 0.0, _when(partial1, _event(1, True)),
                     partial=True)
        partial1.set_result(None)  # computed, waiting for final 0 to go out first
        await asyncio.sleep(0)
        s._endpointer = Endpointer(p.EmotionConfig(), 16_000)

        async def emotion(utterance: Utterance, partial: bool = False,
                          **_: object) -> BaseModel:
            return _event(utterance.index, partial)

        s._emotion = emotion  # type: ignore[assignment,method-assign]
        s._submit_utterance(Utterance(1, 0, 16_000, np.zeros(16_000, np.float32)), 0.0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert _sent(s) == []  # final 1 waits for final 0, not for the cancelled partial
        final0.set_result(None)
        await asyncio.wait(set(s._pending))
        assert (s.counts.partials, s.counts.partials_cancelled) == (0, 1)
        return _sent(s)

    assert asyncio.run(scenario()) == [("emotion.utterance", 0), ("emotion.utterance", 1)]


def test_a_final_short_of_room_takes_the_partials_place() -> None:
    async def scenario() -> list[tuple[str, int]]:
        s = _session(max_pending=1)
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()
        s._start_job("emotion", 0, 0.0, 1.0, 0.0, _when(never, _event(0, True)), partial=True)
        ready = loop.create_future()
        ready.set_result(None)
        window = p.ClassifyWindow(index=0, start_s=0.0, end_s=1.0, silent=False, labels=[])
        s._submit("classify", 0, 0.0, 1.0, 0.0, _when(ready, window))
        await asyncio.wait(set(s._pending))
        assert (s.counts.skipped, s.counts.partials_cancelled) == (0, 1)
        return _sent(s)

    assert asyncio.run(scenario()) == [("classify.window", 0)]


@pytest.mark.parametrize(("received_s", "expected_s"), [(2.5, 0.3), (2.1, 0.1), (1.9, 0.0)])
def test_an_utterance_is_due_from_its_last_sample_at_most_the_confirming_silence_ago(
        received_s: float, expected_s: float) -> None:
    """What the core gate orders by (batcher/gate.py): 500 ms of silence confirm an
    utterance whose audio keeps 200 ms of it, so its last sample came 0.3 s earlier;
    less if the stream had less audio after it (input.done flushes it at once)."""
    async def confirmed_after() -> float:
        s = _session()
        s._endpointer = Endpointer(p.EmotionConfig(min_silence_ms=500, padding_ms=200),
                                   16_000)
        s.input_rate, s.audio_samples = 48_000, round(received_s * 48_000)
        utterance = Utterance(0, 0, 32_000, np.zeros(32_000, np.float32))  # ends at 2.0 s
        return s._confirmed_after(utterance)

    assert asyncio.run(confirmed_after()) == pytest.approx(expected_s)


def test_an_utterances_lag_counts_from_its_last_sample() -> None:
    """audioserve_live_result_lag_seconds: from the last sample received to the result
    sent. For an utterance that sample came before the confirming silence (0.3 s of a
    real-time stream here), not with the frame that confirmed it."""
    async def lag_origin() -> float:
        s = _session()
        s._endpointer = Endpointer(p.EmotionConfig(min_silence_ms=500, padding_ms=200),
                                   16_000)
        s.input_rate, s.audio_samples = 16_000, round(2.5 * 16_000)

        async def emotion(utterance: Utterance, partial: bool = False,
                          **_: object) -> BaseModel:
            return _event(utterance.index, partial)

        s._emotion = emotion  # type: ignore[assignment,method-assign]
        s._submit_utterance(Utterance(0, 0, 32_000, np.zeros(32_000, np.float32)), 100.0)
        await asyncio.wait(set(s._pending))
        item = s._outbox.get_nowait()
        assert item is not None and item.task == "emotion"
        return item.received_at

    assert asyncio.run(lag_origin()) == pytest.approx(100.0 - 0.3)
