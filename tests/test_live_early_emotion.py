"""An utterance's emotion started before the end-pointer confirms its end
(service.live.early): the audio it starts on is exactly the confirmed utterance's, the
confirmed result over a real socket still equals /emotion of that audio, and work started
for a pause the speech went on after is cancelled and counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.live.early import EarlyOutcome, EarlyStart
from service.live.protocol import EmotionConfig
from service.live.vad import Endpointer, Utterance
from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir, speech_files  # noqa: F401
from tests.live_fixtures import (  # noqa: F401  (fixtures)
    live_models_dir,
    live_server,
    metric,
    open_stream,
    read_all,
    to_rate,
    wav,
)
from tests.tts_server import RunningServer

RATE = 16_000
PAD = EmotionConfig().padding_ms * RATE // 1000


def _utterances(samples: np.ndarray) -> list[Utterance]:
    endpointer = Endpointer(EmotionConfig(), RATE)
    return endpointer.push(samples.astype(np.float32) / 32768.0) + endpointer.finish()


@pytest.fixture(scope="module")
def paused_speech(speech_files: list[Path]) -> tuple[np.ndarray, tuple[float, float]]:  # noqa: F811
    """int16 at 16 kHz: a real clip (one utterance) with a pause cut into the middle of
    its speech, then silence; and where the pause is (s).

    The pause is the longest (in 10 ms steps) that keeps the clip one utterance (the VAD
    adapts to what precedes it, so this is found, not assumed): its silence runs close to
    min_silence_ms, past the padding, so the utterance looks complete in it and the early
    work is wasted."""
    import soundfile as sf

    clip = to_rate(sf.read(speech_files[0], dtype="int16")[0], RATE)
    (whole,) = _utterances(clip)
    middle = (whole.start + whole.end) // 2
    silence = np.zeros(RATE, np.int16)
    for gap in range(RATE // 2, PAD, -RATE // 100):
        stream = np.concatenate([clip[:middle], np.zeros(gap, np.int16), clip[middle:],
                                 silence, silence])
        if len(_utterances(stream)) == 1:
            return stream, (middle / RATE, (middle + gap) / RATE)
    raise AssertionError("no pause over the padding keeps the clip one utterance")


def _pushes(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(samples), size):
        yield samples[i:i + size]


def test_the_early_utterance_is_the_confirmed_one(
        paused_speech: tuple[np.ndarray, tuple[float, float]]) -> None:
    """Pushed 20 ms at a time: every utterance the endpointer confirms was `ending`, with
    the same samples, before; one `ending` (the pause) was refuted by more speech."""
    samples, pause_s = paused_speech
    endpointer = Endpointer(EmotionConfig(), RATE)
    endings: list[Utterance] = []
    finals: list[Utterance] = []
    for block in _pushes(samples.astype(np.float32) / 32768.0, RATE // 50):
        finals += endpointer.push(block)
        ending = endpointer.ending()
        if ending is not None and (not endings or (ending.index, ending.end)
                                   != (endings[-1].index, endings[-1].end)):
            endings.append(ending)
    assert endpointer.ending() is None  # the last one was confirmed
    assert finals, "no utterance found"
    early = {(u.index, u.start, u.end): u for u in endings}
    for final in finals:
        match = early.get((final.index, final.start, final.end))
        assert match is not None, f"utterance {final.index} was never ending before its end"
        np.testing.assert_array_equal(match.samples, final.samples)
    assert len(endings) > len(finals), "the pause never looked like an end"
    assert any(u.start / RATE < pause_s[0] and u.end / RATE > pause_s[1] for u in finals)


def test_early_start_runs_one_task_per_ending_and_cancels_the_refuted() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        outcomes: list[EarlyOutcome] = []
        started: list[int] = []
        release = asyncio.Event()

        async def work(utterance: Utterance, received_at: float) -> int:
            started.append(utterance.end)
            await release.wait()
            return utterance.end

        early: EarlyStart[int] = EarlyStart(work, outcomes.append)
        a = Utterance(0, 0, 100, np.zeros(100, np.float32))
        b = Utterance(0, 0, 300, np.zeros(300, np.float32))
        early.offer(a, 0.0)
        early.offer(a, 0.1)  # still ending: the same work goes on
        await asyncio.sleep(0)
        early.offer(None, 0.2)  # the speech went on
        early.offer(b, 0.3)
        await asyncio.sleep(0)
        assert early.take(a) is None  # not what is in flight
        task = early.take(b)
        assert task is not None and early.take(b) is None
        early.settle(task, used=True)
        release.set()
        assert await task == 300
        return [str(o) for o in outcomes], started

    outcomes, started = asyncio.run(scenario())
    assert started == [100, 300]
    assert outcomes == ["wasted", "used"]


def _early_metric(server: RunningServer) -> dict[str, float]:
    return {outcome: metric(server, "audioserve_live_early_emotion_total", outcome=outcome)
            for outcome in ("used", "wasted")}


def test_early_results_over_a_socket_equal_offline(
        live_server: RunningServer,  # noqa: F811
        paused_speech: tuple[np.ndarray, tuple[float, float]]) -> None:
    """Sent in 20 ms frames (each one analysis step, in order, however fast the machine):
    every utterance's result came from its early start and equals /emotion of its audio;
    the pause's early start was wasted."""
    samples, pause_s = paused_speech
    before = _early_metric(live_server)
    with open_stream(live_server) as ws:
        ws.send(json.dumps({"type": "session.config",
                            "input": {"format": "pcm_s16le", "sample_rate": RATE},
                            "emotion": {"granularity": "utterance"}}))
        for frame in _pushes(samples, RATE // 50):
            ws.send(frame.tobytes())
        ws.send(json.dumps({"type": "input.done"}))
        t = read_all(ws)
    assert t.close_code == 1000, t.events[-1]
    utterances = t.of("emotion.utterance")
    assert utterances and t.of("session.done")[0]["utterances"] == len(utterances)
    after = _early_metric(live_server)
    assert after["used"] - before["used"] == len(utterances)
    assert after["wasted"] - before["wasted"] >= 1
    assert any(u["start_s"] < pause_s[0] and u["end_s"] > pause_s[1] for u in utterances)
    for u in utterances:
        segment = samples[round(u["start_s"] * RATE):round(u["end_s"] * RATE)]
        response = httpx.post(f"{live_server.url}/emotion",
                              files={"file": ("u.wav", wav(segment, RATE))}, timeout=60)
        assert response.status_code == 200, response.text
        offline = {s["label"]: s["score"] for s in response.json()["scores"]}
        live = {s["label"]: s["score"] for s in u["scores"]}
        assert max(abs(live[k] - offline[k]) for k in offline) < 1e-5
