"""The openai SDK's embeddings, models and voices calls, and speech with OpenAI's voice
objects, built-in names and dated models, against the real app on a real socket."""

from __future__ import annotations

import base64
import json
import typing
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.tts.model_names import MODEL_NAME
from service.tts.voices import DEFAULT_VOICE_SEEDS
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.clap_fixtures import clap_models_dir, make_clip, wav_bytes  # noqa: F401
from tests.conftest import packs_dir
from tests.tts_server import RunningServer, serve_app

openai = pytest.importorskip("openai")
from openai.types.audio import speech_create_params  # noqa: E402

TEXTS = ["a dog barking", "rain on a window"]


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, chattts_models_dir: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = packs_dir(tmp_path_factory, "sdk_models", clap=clap_models_dir,
                     chattts=chattts_models_dir)
    with serve_app(models_dir=root, intra_op_threads=1, warmup=False, tts_max_text_chars=200,
                   voices_dir=tmp_path_factory.mktemp("voices")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def clip_b64(seconds: float, seed: int) -> str:
    return base64.b64encode(wav_bytes(make_clip(seconds, seed=seed))).decode()


def reference_text(server: RunningServer) -> np.ndarray:
    r = httpx.post(server.url + "/embed/text", json={"input": TEXTS})
    return np.array([d["embedding"] for d in r.json()["data"]], np.float32)


# -- embeddings -----------------------------------------------------------------------

def test_sdk_text_embeddings_base64_by_default_equal_embed_text(client, server) -> None:  # type: ignore[no-untyped-def]
    answer = client.embeddings.create(model="clap", input=TEXTS)  # the SDK asks for base64
    got = np.array([d.embedding for d in answer.data], np.float32)
    np.testing.assert_array_equal(got, reference_text(server))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS)
    assert answer.model == "clap"


def test_sdk_text_embeddings_float_and_the_raw_base64_bytes(client, server) -> None:  # type: ignore[no-untyped-def]
    floats = client.embeddings.create(model="clap", input=TEXTS, encoding_format="float")
    raw = httpx.post(server.url + "/v1/embeddings", json={
        "model": "clap", "input": TEXTS, "encoding_format": "base64"}).json()
    for item, as_float in zip(raw["data"], floats.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
        np.testing.assert_array_equal(decoded, np.array(as_float.embedding, np.float32))


def test_sdk_audio_embeddings_share_the_text_space(client, server) -> None:  # type: ignore[no-untyped-def]
    clips = [clip_b64(2.0, 1), "data:audio/wav;base64," + clip_b64(3.0, 2)]
    for encoding in ("float", "base64"):
        answer = client.embeddings.create(model="clap", input=clips, encoding_format=encoding,
                                          extra_body={"modality": "audio"})
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4")  # type: ignore[arg-type]
                        if encoding == "base64" else d.embedding for d in answer.data],
                       np.float32)
        for i, clip in enumerate(clips):
            one = httpx.post(server.url + "/embed/audio", json={"audio": clip}).json()
            np.testing.assert_allclose(got[i], one["data"][0]["embedding"], atol=1e-6)
        assert answer.usage.prompt_tokens == 0
        assert got.shape[1] == reference_text(server).shape[1]  # one space: same size


def test_dimensions_other_than_the_model_is_a_clear_422(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.embeddings.create(model="clap", input=TEXTS, dimensions=8)
    assert "not trained to be shortened" in info.value.message
    size = len(client.embeddings.create(model="clap", input="x", encoding_format="float")
               .data[0].embedding)
    assert len(client.embeddings.create(model="clap", input="x", dimensions=size)
               .data[0].embedding) == size


@pytest.mark.parametrize(("body", "words"), [
    ({"model": "text-embedding-3-small", "input": "x"}, "not served here"),
    ({"model": "clap", "input": [[1, 2, 3]]}, "token-id arrays"),
    ({"model": "clap", "input": ["not base64!"], "modality": "audio"}, "not valid base64"),
    ({"model": "clap", "input": [], "modality": "audio"}, "empty"),
])
def test_embedding_refusals_say_why_in_openai_shape(server: RunningServer,
                                                    body: dict[str, object],
                                                    words: str) -> None:
    r = httpx.post(server.url + "/v1/embeddings", json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert words in r.json()["error"]["message"]


# -- models ---------------------------------------------------------------------------

def test_sdk_models_list_and_retrieve(client) -> None:  # type: ignore[no-untyped-def]
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"clap", "chattts"}
    clap = client.models.retrieve("clap")
    assert clap.object == "model" and clap.owned_by == "audioserve" and clap.created > 0
    assert clap.created == listed["clap"].created
    assert clap.model_extra and clap.model_extra["precision"] == "fp32"  # our fields stay
    for alias in ("tts-1", "gpt-4o-mini-tts"):  # the names /v1/audio/speech takes
        speech = client.models.retrieve(alias)
        assert speech.id == alias and speech.model_extra["kind"] == "chattts"
    source = listed["clap"].model_extra["source"]  # what /v1/embeddings takes as well
    assert client.models.retrieve(source).model_extra["kind"] == "clap"
    slashed = httpx.get(f"{client.base_url}models/laion/clap-htsat-unfused")  # a hub id
    assert slashed.status_code == 404 and "laion/clap" in slashed.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("whisper-1")
    error = missing.value.body  # OpenAI's shape, as every /v1 route's errors
    assert isinstance(error, dict) and error["type"] == "invalid_request_error", error
    assert error["code"] == "not_found" and "whisper-1" in error["message"], error


# -- voices ---------------------------------------------------------------------------

def test_sdk_voice_from_a_prompt_spec_then_speech_by_id_then_delete(client) -> None:  # type: ignore[no-untyped-def]
    voice = client.audio.voices.create(name="warm", type="prompt", prompt="alloy(2)+echo(1)")
    assert (voice.id, voice.name, voice.object, voice.type) == ("warm", "warm", "audio.voice",
                                                                "prompt")
    assert voice.prompt == "alloy(2)+echo(1)" and voice.created_at > 0
    by_id = client.audio.speech.create(model="tts-1", voice={"id": voice.id}, input="hi there",
                                       response_format="wav", extra_body={"seed": 3}).read()
    by_mix = client.audio.speech.create(model="tts-1", voice="alloy(2)+echo(1)",
                                        input="hi there", response_format="wav",
                                        extra_body={"seed": 3}).read()
    assert by_id == by_mix
    listed = httpx.get(str(client.base_url) + "audio/voices").json()
    assert "warm" in [v["id"] for v in listed["data"]]
    deleted = client.audio.voices.delete(voice.id)
    assert (deleted.id, deleted.deleted, deleted.object) == ("warm", True,
                                                             "audio.voice.deleted")
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete(voice.id)


def test_sdk_voice_from_an_audio_sample_is_a_clear_422(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.voices.create(name="me", consent="cons_1",
                                   audio_sample=("me.wav", wav_bytes(make_clip(1.0, seed=1))))
    assert "no speaker encoder" in info.value.message
    assert info.value.code == "voice_from_audio_sample_unsupported"


def test_a_prompt_that_describes_a_voice_says_what_prompt_takes(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.voices.create(name="x", type="prompt", prompt="a warm, low voice")
    assert "takes no description" in info.value.message


def test_a_bad_voice_name_is_blamed_on_the_name(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.voices.create(name="a b", type="prompt", prompt="alloy")
    assert info.value.body["param"] == "name" and "not allowed" in info.value.message


def test_sdk_voice_extensions_seed_and_builtin_delete_refused(client) -> None:  # type: ignore[no-untyped-def]
    voice = client.audio.voices.create(name="seeded", type="prompt", prompt="x",
                                       extra_body={"prompt": None, "seed": 99})
    assert voice.model_extra and voice.model_extra["seed"] == 99
    with pytest.raises(openai.ConflictError):
        client.audio.voices.delete("alloy")
    client.audio.voices.delete("seeded")


def test_the_voice_form_as_swagger_fills_it_saves_a_voice(server: RunningServer) -> None:
    """Swagger UI's form for POST /v1/audio/voices: each field's published example (the
    fields without one start empty and are not sent) makes a voice."""
    spec = httpx.get(server.url + "/openapi.json").json()
    form = (spec["paths"]["/v1/audio/voices"]["post"]["requestBody"]["content"]
            ["multipart/form-data"]["schema"])
    fields = {name: str(prop["examples"][0]) for name, prop in form["properties"].items()
              if prop.get("examples")}
    assert set(form["required"]) <= set(fields)
    r = httpx.post(server.url + "/v1/audio/voices",
                   files={name: (None, value) for name, value in fields.items()})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == fields["name"]
    assert httpx.delete(f"{server.url}/v1/audio/voices/{fields['name']}").status_code == 200


# -- speech ---------------------------------------------------------------------------

def test_every_sdk_builtin_voice_name_speaks(client) -> None:  # type: ignore[no-untyped-def]
    literal = typing.get_args(speech_create_params.Voice)[1]
    names = typing.get_args(literal)
    assert {"marin", "cedar"} <= set(names) <= set(DEFAULT_VOICE_SEEDS)
    for name in names:
        data = client.audio.speech.create(model="gpt-4o-mini-tts", voice=name, input="hi",
                                          response_format="pcm",
                                          extra_body={"seed": 1}).read()
        assert len(data) > 0, name


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts",
                                   "gpt-4o-mini-tts-2025-12-15", "tts-1-hd-2024-01-01",
                                   "chattts"])
def test_dated_and_family_model_names_are_taken(client, model: str) -> None:  # type: ignore[no-untyped-def]
    assert MODEL_NAME.fullmatch(model)
    data = client.audio.speech.create(model=model, voice="cedar", input="hi",
                                      response_format="pcm", extra_body={"seed": 1}).read()
    assert data


@pytest.mark.parametrize("model", ["whisper-1", "tts-2", "gpt-4o-mini-tts-2025-12",
                                   "tts-1-20250101"])
def test_other_model_names_are_refused(client, model: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.audio.speech.create(model=model, voice="alloy", input="hi")
    assert "YYYY-MM-DD" in info.value.message


def test_sse_done_reports_input_and_output_tokens(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v1/audio/speech", timeout=60, json={
        "model": "gpt-4o-mini-tts-2025-12-15", "input": "hello there", "voice": {"id": "marin"},
        "response_format": "pcm", "stream_format": "sse", "seed": 1})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    usage = events[-1]["usage"]
    assert events[-1]["type"] == "speech.audio.done"
    assert usage["input_tokens"] > 2  # more than the two words: the prompt
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_audio_answers_name_a_file(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "flac"})
    assert r.headers["content-disposition"] == 'attachment; filename="speech.flac"'
    r = httpx.post(server.url + "/tts", timeout=60, json={"text": "hi", "stream": True})
    assert r.headers["content-disposition"] == 'attachment; filename="speech.wav"'


def test_seeds_are_capped_where_javascript_keeps_them_exact(server: RunningServer) -> None:
    top = 2**53 - 1
    ok = httpx.post(server.url + "/tts", timeout=60, json={"text": "hi", "sampling_seed": top})
    assert ok.status_code == 200 and ok.headers["x-audioserve-sampling-seed"] == str(top)
    over = httpx.post(server.url + "/tts", json={"text": "hi", "sampling_seed": top + 1})
    assert over.status_code == 422 and str(top) in over.json()["error"]["message"]


def test_a_drawn_seed_can_be_sent_back(server: RunningServer) -> None:
    """The seed a reply reports for unseeded sampling is one the routes take again, and
    gives the same audio (a 63-bit draw used to be refused by the 2^53-1 cap)."""
    body = {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "pcm"}
    for _ in range(4):
        first = httpx.post(server.url + "/v1/audio/speech", timeout=60, json=body)
        seed = int(first.headers["x-audioserve-sampling-seed"])
        again = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                           json={**body, "seed": seed})
        assert again.status_code == 200 and again.content == first.content
        tts = httpx.post(server.url + "/tts", timeout=60, json={
            "text": "hi", "voice": "alloy", "format": "pcm", "sampling_seed": seed})
        assert tts.status_code == 200, tts.text
