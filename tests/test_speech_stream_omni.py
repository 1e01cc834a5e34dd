"""WS /v1/audio/speech/stream as vLLM-Omni's clients speak it, over a real socket against
the real app (uvicorn + the tiny ChatTTS pack): the session.config its example client
sends works once its voice name is saved here; the Qwen3-TTS-only fields are listed as
ignored on the utterance's first event; cloning, word timestamps and languages ChatTTS
does not speak are refused by name; `split_granularity` `none` waits for `input.done`
and `clause` speaks clauses, each with `/tts`'s audio for the same split."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from service.live.speech_protocol import SERVER_EVENTS
from service.tts.chunking import split_pieces
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.test_speech_stream import TEXT, TOKENS, assert_same_pcm, read_utterance, ws_url
from tests.test_speech_stream_limits import refused
from tests.tts_server import RunningServer, serve_app

OMNI_CLIENT_CONFIG = {"type": "session.config", "voice": "Vivian", "task_type": "CustomVoice",
                      "language": "Auto", "response_format": "wav", "speed": 1.0}
"""What vLLM-Omni's example streaming client (examples/online_serving/qwen3_tts/
streaming_speech_client.py) sends with its defaults; `--stream-audio` adds
`stream_audio: true` and needs `response_format: "pcm"`; `--max-new-tokens` adds that."""
SEEDED = {"seed": 7, "max_new_tokens": TOKENS}


@pytest.fixture(scope="module")
def server(chattts_models_dir: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                   tts_stream_chunk_tokens=8, tts_piece_max_chars=60, warmup=False,
                   voices_dir=tmp_path_factory.mktemp("voices"),
                   tts_ws_max_message_bytes=4096, tts_ws_idle_timeout_s=2.0) as s:
        yield s


def tts_pcm(server: RunningServer, text: str, split: str, voice: str = "alloy") -> bytes:
    r = httpx.post(server.url + "/tts", timeout=120, json={
        "text": text, "voice": voice, "sampling_seed": 7, "format": "pcm",
        "max_new_tokens": TOKENS, "split": split})
    assert r.status_code == 200, r.text
    return r.content


def per_sentence_audio(ws: ClientConnection) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """An utterance read as vLLM-Omni's example client reads it: the binary frames after
    each `audio.start` are that sentence's audio, saved at its `audio.done`."""
    events, audio, current = [], {}, bytearray()
    while True:
        message = ws.recv(timeout=60)
        if isinstance(message, bytes):
            current += message
            continue
        event = json.loads(message)
        SERVER_EVENTS.validate_python(event)
        events.append(event)
        if event["type"] == "audio.start":
            current = bytearray()
        elif event["type"] == "audio.done":
            audio[event["sentence_index"]] = bytes(current)
        elif event["type"] in ("session.done", "error"):
            return events, audio


def speak_whole(ws: ClientConnection, text: str) -> None:
    ws.send(json.dumps({"type": "input.text", "text": text}))
    ws.send(json.dumps({"type": "input.done"}))


def test_the_omni_example_clients_config_works_once_its_voice_is_saved(
        server: RunningServer) -> None:
    with connect(ws_url(server)) as ws:  # Qwen3-TTS's "Vivian" is no ChatTTS voice...
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, **SEEDED}))
        event, close = refused(ws)
    assert event["code"] == "invalid_config" and close == 4400
    assert "'Vivian' is not known" in event["message"] and "/v1/voices" in event["message"]
    saved = httpx.post(server.url + "/v1/voices", json={"name": "Vivian", "seed": 1234})
    assert saved.status_code == 201, saved.text  # ...until one is saved under that name
    reference = tts_pcm(server, TEXT, "sentence", voice="Vivian")

    with connect(ws_url(server)) as ws:
        # --stream-audio: raw PCM; text word by word as an STT would send it
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, **SEEDED, "response_format": "pcm",
                            "stream_audio": True}))
        for word in TEXT.split(" "):
            ws.send(json.dumps({"type": "input.text", "text": word + " "}))
        ws.send(json.dumps({"type": "input.done"}))
        events, sentences = per_sentence_audio(ws)
        starts = [e for e in events if e["type"] == "audio.start"]
        assert starts[0]["ignored"].keys() == {"task_type", "language"}
        assert all("ignored" not in e for e in events[1:])  # said once
        assert (starts[0]["format"], starts[0]["sample_rate"], starts[0]["channels"]) == (
            "pcm", 24000, 1)
        assert events[-1] == {"type": "session.done", "utterance_index": 0,
                              "total_sentences": 4, **{k: events[-1][k] for k in (
                                  "audio_s", "first_audio_s", "underrun_s")}}
        # the sentences' audio, saved as that client saves it, is the whole utterance
        assert sorted(sentences) == [0, 1, 2, 3]
        assert_same_pcm(b"".join(sentences[i] for i in range(4)), reference, "per sentence")

        # its default: wav (one streamed WAV per utterance, header in sentence 0's audio)
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, **SEEDED}))
        speak_whole(ws, TEXT)
        events, sentences = per_sentence_audio(ws)
        wav = b"".join(sentences[i] for i in range(4))
        assert wav[:4] == b"RIFF" and events[0]["format"] == "wav"
        assert_same_pcm(wav[len(wav) - len(reference):], reference, "wav")
        assert events[-1]["utterance_index"] == 1


def test_aliases_nulls_and_ignored_fields(server: RunningServer) -> None:
    """`speaker` for `voice`, nulls for defaults, and every field that only steers
    Qwen3-TTS: the audio is what the plain config gives, the fields are listed once."""
    ignored = {"task_type": "VoiceDesign", "language": "en-US", "instructions": "calm",
               "initial_codec_chunk_frames": 0, "non_streaming_mode": True,
               "x_vector_only_mode": False, "stream_audio": False, "request_id": "r-1",
               "session_id": "s-1"}
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({"type": "session.config", "speaker": "alloy", "model": None,
                            "speed": None, "response_format": None, "ref_audio": None,
                            "speaker_embedding": None, "word_timestamps": None,
                            "split_granularity": None, **SEEDED, **ignored}))
        ws.send(json.dumps({"type": "input.done"}))  # an empty utterance: its only event
        empty = read_utterance(ws)
        assert empty.events[0]["type"] == "session.done"
        assert empty.events[0]["ignored"].keys() == ignored.keys()
        speak_whole(ws, TEXT)
        spoken = read_utterance(ws)
    assert all("ignored" not in e for e in spoken.events)  # said for the config once
    assert_same_pcm(bytes(spoken.audio), tts_pcm(server, TEXT, "sentence"), "aliases")


@pytest.mark.parametrize(("fields", "named"), [
    ({"ref_audio": "data:audio/wav;base64,UklGRg=="}, "ref_audio: voice cloning"),
    ({"ref_text": "what the reference says"}, "ref_text:"),
    ({"task_type": "Base", "x_vector_only_mode": True}, "x_vector_only_mode:"),
    ({"speaker_embedding": [0.25] * 16}, "speaker_embedding:"),
    ({"word_timestamps": True}, "word_timestamps: there is no word aligner"),
    ({"language": "Japanese"}, "language 'Japanese': ChatTTS speaks English and Chinese"),
    ({"model": "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"}, "model 'Qwen/Qwen3-TTS"),
])
def test_what_chattts_cannot_do_is_refused_by_name(
        server: RunningServer, fields: dict[str, Any], named: str) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, "voice": "alloy", **fields}))
        event, close = refused(ws)
    assert event["code"] == "invalid_config" and close == 4400
    assert event["message"].startswith(named), event
    assert "use `voice`" in event["message"] or "ref_audio" not in named


def test_unknown_fields_and_oversized_clones_are_named(server: RunningServer) -> None:
    with connect(ws_url(server)) as ws:  # a typo of split_granularity
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, "split_granularty": "clause"}))
        event, close = refused(ws)
    assert event["code"] == "invalid_message" and close == 4400
    assert "split_granularty: Extra inputs are not permitted" in event["message"]
    with connect(ws_url(server)) as ws:  # an inline reference clip past the message limit
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, "ref_audio": "UklGRg==" * 1000}))
        event, close = refused(ws)
    assert event["code"] == "message_too_large" and close == 1009
    assert "ref_audio (voice cloning) is not supported here: use `voice`" in event["message"]
    with connect(ws_url(server)) as ws:  # the alias and the field at once
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, "voice": "alloy", "speaker": "echo"}))
        event, close = refused(ws)
    assert event["code"] == "invalid_message" and close == 4400
    assert "give one of the two, not both" in event["message"], event


def test_granularity_none_waits_for_input_done_then_speaks_as_tts(
        server: RunningServer) -> None:
    config = {**OMNI_CLIENT_CONFIG, **SEEDED, "voice": "alloy", "response_format": "pcm",
              "split_granularity": "none"}
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(config))
        ws.send(json.dumps({"type": "input.text", "text": "One sentence. And another. "}))
        first = ws.recv(timeout=60)  # nothing is generated, so the session is idle
    assert isinstance(first, str) and json.loads(first).get("code") == "idle_timeout", first
    with connect(ws_url(server)) as ws:  # the control: by sentence, audio comes at once
        ws.send(json.dumps({**config, "split_granularity": "sentence"}))
        ws.send(json.dumps({"type": "input.text", "text": "One sentence. And another. "}))
        first = ws.recv(timeout=60)
        assert isinstance(first, str) and json.loads(first)["type"] == "audio.start"
        ws.send(json.dumps({"type": "input.done"}))
        assert read_utterance(ws).events[-1]["type"] == "session.done"

    with connect(ws_url(server)) as ws:
        ws.send(json.dumps(config))
        for word in TEXT.split(" "):
            ws.send(json.dumps({"type": "input.text", "text": word + " "}))
        ws.send(json.dumps({"type": "input.done"}))
        u = read_utterance(ws)
    reference = tts_pcm(server, TEXT, "long")  # /tts's default cut of the whole text
    texts = [e["sentence_text"] for e in u.events if e["type"] == "audio.start"]
    assert texts == split_pieces(TEXT, 60, "long") and len(texts) == 3  # not 4 sentences
    assert_same_pcm(bytes(u.audio), reference, "none")


def test_granularity_clause_speaks_each_clause_as_tts_does(server: RunningServer) -> None:
    text = "Well, it costs 3,000 dollars; we pay at 10:30. Then we go home"
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, **SEEDED, "voice": "alloy",
                            "response_format": "pcm", "split_granularity": "clause"}))
        ws.send(json.dumps({"type": "input.text", "text": "Well, it"}))
        first = json.loads(ws.recv(timeout=60))  # the first clause speaks before the rest
        assert (first["type"], first["sentence_text"]) == ("audio.start", "Well,")
        ws.send(json.dumps({"type": "input.text", "text": text[len("Well, it"):]}))
        ws.send(json.dumps({"type": "input.done"}))
        rest = read_utterance(ws)
    texts = [first["sentence_text"]] + [
        e["sentence_text"] for e in rest.events if e["type"] == "audio.start"]
    assert texts == ["Well,", "it costs 3,000 dollars;", "we pay at 10:30.", "Then we go home"]
    assert_same_pcm(bytes(rest.audio), tts_pcm(server, text, "clause"), "clause")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_that_hangs_up_mid_audio_is_a_disconnect_not_a_failure(
        server: RunningServer, caplog: pytest.LogCaptureFixture, how: str) -> None:
    closed = server.app.state.metrics.tts_ws_closed.labels("disconnected")
    before = closed._value.get()
    with connect(ws_url(server)) as ws:
        ws.send(json.dumps({**OMNI_CLIENT_CONFIG, "voice": "alloy", "seed": 7,
                            "max_new_tokens": 400, "response_format": "pcm"}))
        ws.send(json.dumps({"type": "input.text", "text": "A long sentence. " * 3}))
        while not isinstance(ws.recv(timeout=60), bytes):  # audio is flowing: hang up
            pass
        if how == "reset":  # no close handshake: the server's next send fails
            ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
            ws.socket.close()
    deadline = time.monotonic() + 60
    while closed._value.get() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    reasons = {sample.labels["reason"]: sample.value
               for metric in server.app.state.metrics.tts_ws_closed.collect()
               for sample in metric.samples if sample.name.endswith("_total")}
    assert closed._value.get() == before + 1, (reasons, caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
