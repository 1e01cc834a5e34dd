"""TTS output is bounded like input (issue 21, item 6): AUDIOSERVE_TTS_MAX_OUTPUT_S of
audio after `speed`, through the real app on a real socket. A `max_new_tokens` whose
audio alone is over the cap is refused up front (413); a long text is generated piece by
piece up to the cap and the answer says where it was cut, whole file or stream."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from service.pipelines.chattts import cut_to_budget
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.h11_client import post_json
from tests.tts_server import RunningServer, serve_app

CAP_S = 1.0
TOKEN_S = 512 / 24000
TEXT = "one two three. four five six. seven eight nine. ten eleven twelve."


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> Iterator[RunningServer]:
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   warmup=False, tts_stream_chunk_tokens=8, tts_max_output_s=CAP_S,
                   tts_piece_max_chars=16,
                   voices_dir=tmp_path_factory.mktemp("voices")) as s:
        yield s


def test_cut_to_budget_keeps_pieces_in_order() -> None:
    assert cut_to_budget([5, 7, 3], 20) == ([5, 7, 3], False)
    assert cut_to_budget([5, 7, 3], 9) == ([5, 4, 0], True)
    assert cut_to_budget([5, 7, 3], 15) == ([5, 7, 3], False)


@pytest.mark.parametrize("speed,tokens", [(1.0, 60), (0.5, 30), (4.0, 200)])
def test_max_new_tokens_over_the_cap_is_refused_up_front(server: RunningServer, speed: float,
                                                         tokens: int) -> None:
    assert tokens * TOKEN_S / speed > CAP_S
    answer = httpx.post(server.url + "/tts", json={
        "text": "hello", "seed": 1, "max_new_tokens": tokens, "speed": speed}, timeout=60)
    assert answer.status_code == 413, answer.text
    message = answer.json()["error"]["message"]
    assert "AUDIOSERVE_TTS_MAX_OUTPUT_S" in message and f"speed {speed:g}" in message


@pytest.mark.parametrize("speed", [1.0, 0.5, 2.0])
def test_a_long_text_is_cut_at_the_cap_and_says_so(server: RunningServer,
                                                   speed: float) -> None:
    engine = server.app.state.pipelines["chattts"].engine
    aborted = engine.stats().aborted
    answer = httpx.post(server.url + "/tts", json={
        "text": TEXT, "seed": 1, "speed": speed, "format": "wav"}, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    wave, rate = sf.read(io.BytesIO(answer.content))
    pieces = int(answer.headers["X-Audioserve-Pieces"])
    assert answer.headers["X-Audioserve-Truncated-At-S"] == f"{CAP_S:g}", answer.headers
    assert answer.headers["X-Audioserve-Finish-Reason"] == "max_output"
    assert len(wave) / rate <= CAP_S
    assert int(answer.headers["X-Audioserve-Tokens"]) <= CAP_S * speed / TOKEN_S + 1
    assert pieces >= 1
    # the spans stop where the audio does (this WAV is at the model's 24 kHz)
    spans = answer.headers["X-Audioserve-Sentences"].removeprefix("rate=24000; spans=")
    ends = [int(span.split("-")[1]) for span in spans.split(",")]
    assert len(ends) == pieces and ends[-1] == len(wave)
    # generation stopped at the cap: later pieces were aborted, not run to their end
    assert engine.stats().aborted > aborted
    assert engine.active == 0


@pytest.mark.parametrize("speed", [1.0, 0.5])
def test_a_stream_ends_at_the_cap(server: RunningServer, speed: float) -> None:
    with httpx.stream("POST", server.url + "/tts", json={
            "text": TEXT, "seed": 1, "speed": speed, "format": "pcm", "stream": True},
            timeout=120) as r:
        data = r.read()
    assert r.status_code == 200
    assert r.headers["X-Audioserve-Max-Output-S"] == f"{CAP_S:g}"
    seconds = len(data) / 2 / 24000
    assert 0.5 * CAP_S < seconds <= CAP_S + 0.05, seconds


def test_a_stream_cut_at_the_cap_says_so_at_its_end(server: RunningServer) -> None:
    """A stream cannot say up front that it will be cut: its trailer does (h11 reads
    trailers), and so does the SSE stream's last event."""
    body = {"text": TEXT, "seed": 1, "format": "pcm", "stream": True}
    answer = post_json(server.host, server.port, "/tts", body)
    assert answer.status == 200 and answer.complete
    assert answer.trailers["x-audioserve-truncated-at-s"] == f"{CAP_S:g}", answer.trailers
    short = post_json(server.host, server.port, "/tts", {**body, "text": "one two.",
                                                         "max_new_tokens": 20})
    assert short.trailers["x-audioserve-truncated-at-s"] == "no", short.trailers
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120, json={
            "model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 1,
            "response_format": "pcm", "stream_format": "sse"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["audioserve"]["truncated_at_s"] == CAP_S, events[-1]["audioserve"]
