"""Named voices through the real app: seeded defaults, saving from a seed, an `spk_emb`
string or a mix, name validation, and voices used by /tts and /v1/audio/speech."""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.tts import speaker
from service.tts.speaker import SpeakerStats
from service.tts.voices import (
    DEFAULT_VOICE_SEEDS,
    LOCK_FILE,
    StoreLimits,
    VoiceStore,
    VoiceStoreFull,
)
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.conftest import HANG_S, running_app


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture(scope="module")
def client(chattts_models_dir: Path, voices_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    with running_app(models_dir=chattts_models_dir, models="chattts", intra_op_threads=1,
                     voices_dir=voices_dir, warmup=False) as c:
        yield c


def speak(client: TestClient, **body: object) -> bytes:
    payload = {"text": "hello world", "sampling_seed": 4, "max_new_tokens": 16,
               "format": "pcm", **body}
    r = client.post("/tts", json=payload)
    assert r.status_code == 200, r.text
    return r.content


def test_defaults_are_listed_as_seeds(client: TestClient) -> None:
    r = client.get("/v1/voices")
    assert r.status_code == 200
    voices = {v["name"]: v for v in r.json()["data"]}
    assert set(DEFAULT_VOICE_SEEDS) <= set(voices)
    assert voices["alloy"] == {"name": "alloy", "source": "seed", "builtin": True,
                               "seed": DEFAULT_VOICE_SEEDS["alloy"], "mix": None}
    assert client.get("/voices").json() == r.json()


def test_default_voice_is_its_seeded_speaker(client: TestClient) -> None:
    by_voice = speak(client, voice="alloy")
    by_seed = speak(client, seed=DEFAULT_VOICE_SEEDS["alloy"])
    assert by_voice == by_seed
    assert speak(client, voice="echo") != by_voice


def test_save_from_seed_spk_emb_and_mix(client: TestClient, voices_dir: Path) -> None:
    r = client.post("/v1/voices", json={"name": "narrator", "seed": 99})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "seed"
    stored = json.loads((voices_dir / "narrator.json").read_text())
    # the file holds an upstream-format speaker string of the pack's dimension
    vector = speaker.decode_spk_emb(stored["spk_emb"], 32)
    assert vector.shape == (32,)
    assert speak(client, voice="narrator") == speak(client, seed=99)

    own = speaker.encode_spk_emb(np.random.default_rng(3).standard_normal(32))
    r = client.post("/v1/voices", json={"name": "mine", "spk_emb": own})
    assert r.status_code == 201, r.text
    assert speak(client, voice="mine") == speak(client, spk_emb=own)

    r = client.post("/voices", json={"name": "blend", "mix": "narrator(3)+mine(1)"})
    assert r.status_code == 201, r.text
    assert speak(client, voice="blend") == speak(client, voice="narrator(3)+mine(1)")

    listed = {v["name"]: v["source"] for v in client.get("/v1/voices").json()["data"]}
    assert listed["narrator"] == "seed" and listed["mine"] == "spk_emb"
    assert listed["blend"] == "mix"


def test_mix_weights_matter(client: TestClient) -> None:
    a = speak(client, voice="alloy(1)+echo(1)")
    b = speak(client, voice="alloy(1)+echo(3)")
    assert a != b
    assert speak(client, voice="alloy(2)+echo(2)") == a  # only the ratio counts


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "", "x" * 65, "dot.name",
                                  "sp ace"])
def test_bad_names_are_refused(client: TestClient, voices_dir: Path, name: str) -> None:
    r = client.post("/v1/voices", json={"name": name, "seed": 1})
    assert r.status_code == 422, r.text
    assert "name" in r.json()["error"]["message"]
    assert not (voices_dir.parent / "evil.json").exists()


def test_duplicates_and_defaults_conflict(client: TestClient) -> None:
    assert client.post("/v1/voices", json={"name": "twice", "seed": 1}).status_code == 201
    r = client.post("/v1/voices", json={"name": "twice", "seed": 2})
    assert r.status_code == 409
    assert client.post("/v1/voices", json={"name": "twice", "seed": 2,
                                           "overwrite": True}).status_code == 201
    assert client.post("/v1/voices", json={"name": "alloy", "seed": 2}).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "none"},
        {"name": "both", "seed": 1, "spk_emb": "x"},
        {"name": "bad", "spk_emb": "not a speaker"},
        {"name": "wrongdim", "spk_emb": speaker.encode_spk_emb(np.ones(768))},
        {"name": "badmix", "mix": "alloy(0)"},
        {"name": "ghostmix", "mix": "alloy+ghost"},
    ],
)
def test_bad_sources_are_refused(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/v1/voices", json=body)
    assert r.status_code == 422, r.text


def test_unknown_voice_in_a_request_is_422(client: TestClient) -> None:
    r = client.post("/tts", json={"text": "hi", "voice": "ghost"})
    assert r.status_code == 422
    assert "ghost" in r.json()["error"]["message"]


def test_a_save_waits_for_another_process_holding_the_store(tmp_path: Path) -> None:
    """The caps are checked under a `flock` of the folder's lock file, not only a lock of
    this process: a save blocks while another open file (another process) holds it, so
    ingress replicas sharing the folder cannot each pass the count check at once."""
    stats = SpeakerStats(std=np.ones(32, np.float16), mean=np.zeros(32, np.float16))
    store = VoiceStore(tmp_path, stats, store=StoreLimits(max_saved=1))
    saved: list[str] = []
    with open(tmp_path / LOCK_FILE, "ab") as other:  # a second open file description
        fcntl.flock(other, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: saved.append(store.save("a", seed=1).name))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not (tmp_path / "a.json").exists()
    writer.join(HANG_S)
    assert saved == ["a"] and (tmp_path / "a.json").is_file()
    with pytest.raises(VoiceStoreFull, match="AUDIOSERVE_TTS_MAX_SAVED_VOICES"):
        store.save("b", seed=2)  # the cap, seen by the next writer under the same lock
    assert [name for name, _ in store._entries()] == ["a"]  # the lock file is no voice
