"""WS /v1/audio/speech/stream over a real socket against the real app (uvicorn + the tiny
ChatTTS pack): the same audio as `/tts` with `split: "sentence"` whatever the text's
fragmentation, sentence spans, several utterances per socket, barge-in freeing the slot,
and the audio SLO metrics."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.live.speech_protocol import SERVER_EVENTS
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.conftest import wait_until
from tests.h11_client import post_json
from tests.tools import require_tool
from tests.tts_server import RunningServer, serve_app

TEXT = ("Hello there, this is the first sentence. A second one follows it! "
        "Is the third a question? And the last one ends without a mark")
TOKENS = 40
CONFIG = {"type": "session.config", "voice": "alloy", "seed": 7, "response_format": "pcm",
          "max_new_tokens": TOKENS}


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   tts_stream_chunk_tokens=8, tts_piece_max_chars=60, warmup=False) as s:
        yield s


def ws_url(server: RunningServer) -> str:
    return f"ws://{server.host}:{server.port}/v1/audio/speech/stream"


@dataclass
class Utterance:
    audio: bytearray = field(default_factory=bytearray)
    events: list[dict[str, Any]] = field(default_factory=list)


def read_utterance(ws: ClientConnection, end: str = "session.done") -> Utterance:
    """Messages up to `end` (audio joined, events typed by the protocol's models)."""
    u = Utterance()
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            u.audio += message
            continue
        event = json.loads(message)
        SERVER_EVENTS.validate_python(event)
        u.events.append(event)
        if event["type"] in (end, "error"):
            return u


def fragments(text: str, how: str, rng: random.Random) -> list[str]:
    if how == "whole":
        return [text]
    if how == "words":
        words = text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]]
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) // 3)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def speak(ws: ClientConnection, parts: list[str]) -> Utterance:
    for part in parts:
        ws.send(json.dumps({"type": "input.text", "text": part}))
    ws.send(json.dumps({"type": "input.done"}))
    return read_utterance(ws)


def offline(server: RunningServer, text: str = TEXT) -> httpx.Response:
    r = httpx.post(server.url + "/tts", timeout=120, json={
        "text": text, "voice": "alloy", "sampling_seed": 7, "format": "pcm",
        "max_new_tokens": TOKENS, "split": "sentence"})
    assert r.status_code == 200, r.text
    return r


def assert_same_pcm(got: bytes, want: bytes, what: str) -> None:
    """Sample for sample, up to the decoder's documented float rounding: the streamed
    windows and the one-shot decode differ by ~1e-7, which can flip the last bit of a
    16-bit sample (docs/tts-api.md)."""
    a, b = np.frombuffer(got, "<i2"), np.frombuffer(want, "<i2")
    assert len(a) == len(b), what
    assert int(np.max(np.abs(a.astype(np.int32) - b))) <= 1, what


def test_any_fragmentation_gives_tts_audio_with_sentence_spans(server: RunningServer) -> None:
    reference = offline(server)
    pieces = int(reference.headers["x-audioserve-pieces"])
    assert pieces == 4
    rng = random.Random(5)
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(CONFIG))
        for how in ("whole", "words", "random", "random", "random"):
            u = speak(ws, fragments(TEXT, how, rng))
            assert_same_pcm(bytes(u.audio), reference.content, how)
            starts = [e for e in u.events if e["type"] == "audio.start"]
            dones = [e for e in u.events if e["type"] == "audio.done"]
            assert [e["sentence_index"] for e in starts] == list(range(pieces))
            assert [e["sentence_index"] for e in dones] == list(range(pieces))
            assert starts[0]["sentence_text"].startswith("Hello there")
            assert dones[0]["start_sample"] == 0
            assert dones[-1]["end_sample"] == len(u.audio) // 2
            for a, b in itertools.pairwise(dones):  # neighbours share the crossfade
                assert 0 < a["end_sample"] - b["start_sample"] <= 240
            done = u.events[-1]
            assert done["type"] == "session.done" and done["total_sentences"] == pieces
            # protocol order per sentence: start, then done, before the next start
            kinds = [(e["type"], e.get("sentence_index")) for e in u.events[:-1]]
            assert kinds == [(t, i) for i in range(pieces)
                             for t in ("audio.start", "audio.done")]


def test_utterances_on_one_socket_are_numbered_and_reconfigurable(
        server: RunningServer) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(CONFIG))
        first = speak(ws, ["Just one sentence here."])
        ws.send(json.dumps({**CONFIG, "seed": 8}))
        second = speak(ws, ["Just one sentence here."])
        ws.send(json.dumps({"type": "input.done"}))  # nothing said: an empty utterance
        empty = read_utterance(ws)
        ws.send(json.dumps({"type": "session.close"}))
        with pytest.raises(Exception):  # noqa: B017 - closed 1000 after the close
            ws.recv(timeout=30)
        assert ws.close_code == 1000
    assert first.events[-1]["utterance_index"] == 0
    assert second.events[-1]["utterance_index"] == 1
    assert empty.events == [{"type": "session.done", "utterance_index": 2,
                             "total_sentences": 0, "audio_s": 0.0, "first_audio_s": None,
                             "underrun_s": 0.0}]
    assert first.audio and second.audio and first.audio != second.audio  # seed 7 vs 8


def test_the_socket_says_its_id_and_that_the_pack_is_a_demo(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """As every HTTP answer does: X-Request-ID (the client's, when sane) and, for a
    random-weight pack, X-Audioserve-Demo on the handshake and `demo` on `audio.start`;
    and one access log line when the socket ends."""
    caplog.set_level(logging.INFO, logger="audioserve.access")
    with connect(ws_url(server), additional_headers={"X-Request-ID": "agent-7"}) as ws:
        assert ws.response is not None
        assert ws.response.headers["x-request-id"] == "agent-7"
        assert ws.response.headers["x-audioserve-demo"] == "true"
        ws.send(json.dumps(CONFIG))
        said = speak(ws, ["Just one sentence here."])
        ws.send(json.dumps({"type": "session.close"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
    assert [e["demo"] for e in said.events if e["type"] == "audio.start"] == [True]

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "audioserve.access" and "id=agent-7" in r.getMessage()]

    wait_until(logged, "the socket's access log line")
    assert '"WS /v1/audio/speech/stream" 101 ' in logged()[0]
    assert " close=1000 " in logged()[0]


def test_sse_done_event_states_piece_spans(server: RunningServer) -> None:
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 7,
            "response_format": "pcm", "stream_format": "sse", "split": "sentence"}
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=120) as r:
        lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    done = lines[-1]
    assert done["type"] == "speech.audio.done"
    spans = done["audioserve"]["pieces"]
    assert len(spans) == 4 and spans[0]["start_sample"] == 0
    assert done["audioserve"]["first_audio_s"] is not None


def parse_sentences(value: str) -> tuple[int, list[tuple[int, int]]]:
    """`X-Audioserve-Sentences` (docs/speech-stream.md): the rate and each piece's span."""
    fields = dict(part.split("=", 1) for part in value.split("; "))
    spans = [tuple(map(int, span.split("-"))) for span in fields["spans"].split(",") if span]
    return int(fields["rate"]), spans  # type: ignore[misc]


def test_every_http_path_states_the_sse_spans(server: RunningServer) -> None:
    """Whole answers in a header, streamed audio in a trailer (read off the wire by h11,
    and by curl): the same spans as the SSE event's, for the same text, voice and seed."""
    speech = {"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 7,
              "response_format": "pcm", "split": "sentence"}
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120,
                      json={**speech, "stream_format": "sse"}) as r:
        lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    pieces = lines[-1]["audioserve"]["pieces"]
    want = (lines[-1]["audioserve"]["sample_rate"],
            [(p["start_sample"], p["end_sample"]) for p in pieces])
    assert len(want[1]) == 4
    tts = {"text": TEXT, "voice": "alloy", "sampling_seed": 7, "format": "pcm",
           "split": "sentence"}

    whole = httpx.post(server.url + "/tts", json=tts, timeout=120)
    assert parse_sentences(whole.headers["x-audioserve-sentences"]) == want
    whole_openai = httpx.post(server.url + "/v1/audio/speech", timeout=120,
                              json={**speech, "stream": False})
    assert parse_sentences(whole_openai.headers["x-audioserve-sentences"]) == want
    assert want[1][-1][1] == len(whole.content) // 2  # at 24 kHz, as the PCM

    for target, body in (("/tts", {**tts, "stream": True}), ("/v1/audio/speech", speech)):
        answer = post_json(server.host, server.port, target, body)
        assert answer.status == 200 and answer.complete, target
        assert answer.headers["transfer-encoding"] == "chunked"
        assert answer.headers["trailer"].lower() == ("x-audioserve-sentences, "
                                                     "x-audioserve-truncated-at-s")
        assert "x-audioserve-sentences" not in answer.headers
        assert answer.trailers["x-audioserve-truncated-at-s"] == "no", target
        assert parse_sentences(answer.trailers["x-audioserve-sentences"]) == want, target
        assert_same_pcm(answer.body, whole.content, target)

    curl = require_tool("curl", "apt-get install curl")
    out = subprocess.run([curl, "-sS", "-D", "-", "-o", "/dev/null", "-H",
                          "Content-Type: application/json", "--data", json.dumps(speech),
                          server.url + "/v1/audio/speech"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # -D prints the head, then (the body going to -o) the trailer
    trailer = [line for line in out.splitlines()
               if line.lower().startswith("x-audioserve-sentences:")]
    assert len(trailer) == 1 and out.lower().index("trailer:") < out.index(trailer[0])
    assert parse_sentences(trailer[0].split(":", 1)[1].strip()) == want


def test_a_long_span_list_says_how_many_it_left_out(server: RunningServer) -> None:
    settings = server.app.state.settings
    limit = settings.tts_spans_field_max_bytes
    settings.tts_spans_field_max_bytes = 40  # four spans need more
    try:
        r = httpx.post(server.url + "/tts", timeout=120, json={
            "text": TEXT, "voice": "alloy", "sampling_seed": 7, "format": "pcm",
            "max_new_tokens": TOKENS, "split": "sentence"})
        answer = post_json(server.host, server.port, "/tts", {
            "text": TEXT, "voice": "alloy", "sampling_seed": 7, "format": "pcm",
            "max_new_tokens": TOKENS, "split": "sentence", "stream": True})
    finally:
        settings.tts_spans_field_max_bytes = limit
    assert r.headers["x-audioserve-sentences"] == "rate=24000; omitted=4"
    assert answer.trailers["x-audioserve-sentences"] == "rate=24000; omitted=4"


def test_slo_metrics_for_every_streamed_path(server: RunningServer) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(CONFIG))
        speak(ws, ["One more sentence."])
    with httpx.stream("POST", server.url + "/tts", timeout=120, json={
            "text": "hello", "seed": 1, "max_new_tokens": TOKENS, "stream": True}) as r:
        r.read()
    metrics = httpx.get(server.url + "/metrics").text
    for path in ("ws", "http"):
        for name in ("audioserve_tts_time_to_first_audio_seconds_count",
                     "audioserve_tts_real_time_factor_count",
                     "audioserve_tts_underrun_seconds_count"):
            assert f'{name}{{path="{path}"}}' in metrics, (name, path)
    assert 'audioserve_tts_streams_total{path="ws",result=' in metrics


def test_barge_in_frees_the_slot_for_a_waiting_session(chattts_models_dir: Path  # noqa: F811
                                                       ) -> None:
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   tts_stream_chunk_tokens=8, tts_max_active=1, warmup=False) as server:
        engine = server.app.state.pipelines["chattts"].engine
        long_text = " ".join(f"Sentence number {i} goes on for a while." for i in range(6))
        with connect(ws_url(server)) as a:
            a.send(json.dumps({**CONFIG, "max_new_tokens": 1500}))
            a.send(json.dumps({"type": "input.text", "text": long_text}))
            first = a.recv(timeout=60)
            while not isinstance(first, bytes):
                first = a.recv(timeout=60)
            before = engine.stats()
            waiting: dict[str, Utterance] = {}

            def other() -> None:
                with connect(ws_url(server)) as b:
                    b.send(json.dumps(CONFIG))
                    waiting["b"] = speak(b, ["The waiting session speaks."])

            thread = threading.Thread(target=other)
            thread.start()
            while engine.scheduler.num_waiting < 2:  # A's next piece, then B's
                threading.Event().wait(0.01)
            assert "b" not in waiting  # B cannot start while A holds the only slot
            a.send(json.dumps({"type": "input.cancel"}))
            cancelled = read_utterance(a, end="audio.cancelled")
            assert cancelled.events[-1]["utterance_index"] == 0
            assert cancelled.events[-1]["sent_samples"] == (len(cancelled.audio)
                                                            + len(first)) // 2
            whole = sum(e["type"] == "audio.done" for e in cancelled.events)
            assert cancelled.events[-1]["sentences_done"] == whole  # sent whole, not queued
            thread.join(timeout=120)
            assert waiting["b"].events[-1]["type"] == "session.done"
            assert engine.stats().aborted >= before.aborted + 1
            # the socket stays usable, and nothing of utterance 0 follows its cancel
            a.send(json.dumps({"type": "input.text", "text": "After the cancel."}))
            a.send(json.dumps({"type": "input.done"}))
            after = read_utterance(a)
            assert {e["utterance_index"] for e in after.events} == {1}
            assert after.audio
        assert engine.active == 0


def test_the_documented_client_runs(server: RunningServer, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """docs/speech-stream.md's client, as written, against this server: the whole reply,
    then a barge-in."""
    doc = (Path(__file__).parents[1] / "docs" / "speech-stream.md").read_text()
    code = doc.split("## A complete Python client")[1].split("```python\n")[1].split("```")[0]
    code = code.replace("ws://localhost:8000", f"ws://{server.host}:{server.port}")
    code = code.replace('"seed": 42}', '"seed": 42, "max_new_tokens": 40}')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "speech-stream.md", "exec"), {"__name__": "doc"})
    printed = capsys.readouterr().out
    assert "'type': 'session.done'" in printed and "sentence 2: 'Then we restart" in printed
    # the barge-in comes at the first sentence's audio.done, while the text still streams
    assert "'type': 'audio.cancelled'" in printed and printed.count("session.done") == 1
    assert (tmp_path / "reply.pcm").stat().st_size > 0



def _piece_lengths(r: httpx.Response) -> list[int]:
    """Each piece's samples, from X-Audioserve-Sentences (`rate=R; spans=a-b,...`)."""
    spans = r.headers["x-audioserve-sentences"].split("; ")[1].removeprefix("spans=")
    return [int(b) - int(a) for a, b in (span.split("-") for span in spans.split(","))]


EARLY_STOP_SEED = 3
"""A sampling seed whose random-weight pieces do not all run to max_new_tokens."""


def test_min_new_tokens_holds_every_sentence_to_its_budget(server: RunningServer) -> None:
    """Upstream's `min_new_token`: with min = max every piece is exactly that many tokens
    long (random weights otherwise stop where they please), on /tts and on the socket
    alike (same audio); min above max is refused by both, naming the two fields."""
    body = {"text": TEXT, "voice": "alloy", "sampling_seed": EARLY_STOP_SEED, "format": "pcm",
            "max_new_tokens": TOKENS, "split": "sentence"}
    free = httpx.post(server.url + "/tts", timeout=120, json=body)
    held = httpx.post(server.url + "/tts", timeout=120, json={**body, "min_new_tokens": TOKENS})
    assert free.status_code == held.status_code == 200, (free.text, held.text)
    assert len(set(_piece_lengths(free))) > 1, "this seed should stop a piece early"
    assert len(set(_piece_lengths(held))) == 1, _piece_lengths(held)
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**CONFIG, "seed": EARLY_STOP_SEED, "min_new_tokens": TOKENS}))
        u = speak(ws, fragments(TEXT, "words", random.Random(1)))
    assert_same_pcm(bytes(u.audio), held.content, "min_new_tokens")

    bad = httpx.post(server.url + "/tts", timeout=30,
                     json={**body, "min_new_tokens": TOKENS + 1})
    assert bad.status_code == 422
    assert "min_new_tokens" in bad.text and "max_new_tokens" in bad.text
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**CONFIG, "min_new_tokens": TOKENS + 1}))
        with contextlib.suppress(ConnectionClosed):  # the config alone may be refused first
            ws.send(json.dumps({"type": "input.text", "text": "Hi."}))
        error = read_utterance(ws).events[-1]
    assert error["type"] == "error" and "min_new_tokens" in error["message"], error
