"""A live stream's per-frame analysis runs off the event loop, over a real socket: while
one stream's analysis is held (a threading.Event the test controls; PCM: in the CPU pool,
Ogg/Opus: in its decoder thread), /healthz and a whole second stream are served; once
released, the held stream's results are those of the same stream run unheld, and their
lag in /metrics counts from the frame's arrival, the hold included. Ordered by events,
never by timing (the hold lasts at least HOLD_S, however fast the machine)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.live.analysis import Found, StreamAnalyser
from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.emotion2vec_fixtures import emotion_models_dir, speech_files  # noqa: F401
from tests.live_fixtures import (  # noqa: F401  (fixtures)
    LABELS,
    Transcript,
    live_models_dir,
    live_server,
    metric,
    open_stream,
    read_all,
    speech_stream,
)
from tests.tts_server import RunningServer

RATE = 16_000
"""The other stream's rate; the held stream's is 48 kHz (so its analysis is told apart)."""
TASKS = {"classify": {"labels": LABELS, "hop_s": 1.0}, "emotion": {}}
HOLD_S = 1.1
"""The least a held analysis is held: over the lag histogram's 1 s bucket."""


def _lags_over_1s(server: RunningServer) -> float:
    """Final results (windows, utterances) the server sent more than 1 s after their last
    sample arrived, so far."""
    name = "audioserve_live_result_lag_seconds_bucket"
    return sum(metric(server, name, task=task, le="+Inf") - metric(server, name, task=task,
                                                                     le="1.0")
               for task in ("classify", "emotion"))


def _results(t: Transcript) -> list[dict[str, Any]]:
    assert t.close_code == 1000, t.events
    return [e for e in t.events if e["type"] in ("classify.window", "emotion.utterance")]


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Same results, in the same order per task (the tasks' results interleave as they are
    computed; scores within 1e-5: batch partners may differ)."""
    a = sorted(a, key=lambda e: e["type"])  # stable: each task's own order is kept
    b = sorted(b, key=lambda e: e["type"])
    assert [(e["type"], e["index"], e["start_s"], e["end_s"]) for e in a] == [
        (e["type"], e["index"], e["start_s"], e["end_s"]) for e in b]
    for x, y in zip(a, b, strict=True):
        if x["type"] == "classify.window":
            assert [s["label"] for s in x["labels"]] == [s["label"] for s in y["labels"]]
            pairs = [(s["probability"], r["probability"]) for s, r in
                     zip(x["labels"], y["labels"], strict=True)]
        else:
            assert x["emotion"]["label"] == y["emotion"]["label"]
            theirs = {s["label"]: s["score"] for s in y["scores"]}
            assert len(theirs) == len(x["scores"])
            pairs = [(s["score"], theirs[s["label"]]) for s in x["scores"]]
        assert max(abs(p - q) for p, q in pairs) <= 1e-5


@pytest.mark.parametrize(("fmt", "where"), [("pcm_s16le", "audioserve-cpu"),
                                             ("ogg", "live-decode")])
def test_a_held_analysis_does_not_hold_the_loop(live_server: RunningServer,  # noqa: F811
                                                speech_files: list[Path],  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch,
                                                fmt: str, where: str) -> None:
    from service.audio.encode import encode_audio

    speech48 = speech_stream(speech_files, gap_s=0.5, count=1)
    speech = (speech48.tobytes() if fmt == "pcm_s16le" else
              encode_audio(speech48.astype(np.float32) / 32768, 48_000, "opus"))
    held_input = {"format": fmt, "sample_rate": 48_000} if fmt == "pcm_s16le" else {
        "format": fmt}

    def stream(frames: list[bytes], source: dict[str, Any] | None = None) -> Transcript:
        with open_stream(live_server) as ws:
            ws.send(json.dumps({"type": "session.config", "input": source or held_input,
                                **TASKS}))
            for frame in frames:
                ws.send(frame)
            ws.send(json.dumps({"type": "input.done"}))
            return read_all(ws)

    reference = _results(stream([speech]))

    entered, release = threading.Event(), threading.Event()
    held: list[str] = []
    unheld_push = StreamAnalyser.push

    def push(self: StreamAnalyser, block: np.ndarray, rate: int, received_at: float) -> Found:
        if rate == 48_000 and not held:
            held.append(threading.current_thread().name)
            entered.set()
            release.wait(120)  # the test's failure path: never for ever
        return unheld_push(self, block, rate, received_at)

    monkeypatch.setattr(StreamAnalyser, "push", push)
    with open_stream(live_server) as ws:
        ws.send(json.dumps({"type": "session.config", "input": held_input, **TASKS}))
        ws.send(speech)
        assert entered.wait(60), "the frame's analysis never started"
        entered_at = time.monotonic()
        try:
            # the held step blocks a worker thread, not the loop: the server goes on
            assert httpx.get(f"{live_server.url}/healthz", timeout=30).status_code == 200
            tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(RATE * 3) / RATE)).astype("<i2")
            other = stream([tone[i:i + RATE // 4].tobytes() for i in range(0, len(tone),
                                                                             RATE // 4)],
                           {"format": "pcm_s16le", "sample_rate": RATE})
            assert other.of("session.done") and len(other.of("classify.window")) == 3
            assert not release.is_set()  # all of it while the analysis was still held
            while time.monotonic() - entered_at < HOLD_S:
                time.sleep(0.05)
            late_before = _lags_over_1s(live_server)
        finally:
            release.set()
        ws.send(json.dumps({"type": "input.done"}))
        held_results = _results(read_all(ws))
    # the frame arrived before its analysis was held: its results' lag includes the hold
    assert _lags_over_1s(live_server) - late_before >= 1
    assert held[0].startswith(where)  # where it ran: the CPU pool, the decoder thread
    _same(held_results, reference)
    assert any(e["type"] == "emotion.utterance" for e in reference)
