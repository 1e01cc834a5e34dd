"""CLAP through the real app: /classify, /embed/audio, /embed/text, every 4xx, and
batched vs unbatched answers."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import PackError
from tests.clap_fixtures import make_clip, wav_bytes
from tests.conftest import running_app

pytest_plugins = ("tests.clap_fixtures",)

MAX_LABELS = 8
MAX_LABEL_CHARS = 40
LABELS = ["dog", "rain", "speech", "music"]


@pytest.fixture(scope="module")
def client(clap_models_dir: Path) -> Iterator[TestClient]:
    with running_app(models_dir=clap_models_dir, models="clap", max_labels=MAX_LABELS,
                     max_label_chars=MAX_LABEL_CHARS, max_wait_ms=30.0,
                     max_batch_size=8, adaptive_batch_size=False) as c:
        # a fixed cap: the burst test below must see batches form on any machine
        yield c


@pytest.fixture(scope="module")
def short_wav() -> bytes:
    return wav_bytes(make_clip(2.5, seed=11))


def _classify(client: TestClient, wav: bytes, **data: Any) -> Any:
    return client.post("/classify", files={"file": ("clip.wav", wav, "audio/wav")}, data=data)


def _probs(body: dict[str, Any]) -> dict[str, float]:
    return {s["label"]: s["probability"] for s in body["labels"]}


def _error(response: Any, status: int, pattern: str) -> None:
    assert response.status_code == status, response.text
    assert re.search(pattern, response.json()["error"]["message"]), response.text


# -- happy paths ------------------------------------------------------------------------

def test_classify_multipart_repeated_labels(client: TestClient, short_wav: bytes) -> None:
    r = _classify(client, short_wav, labels=LABELS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["demo"] is True and "random weights" in body["warning"]
    assert (body["model"], body["precision"], body["provider"]) == ("clap", "fp32", "cpu")
    assert sorted(_probs(body)) == sorted(LABELS)
    probs = [s["probability"] for s in body["labels"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    assert body["duration_s"] == pytest.approx(2.5)
    assert (body["windows_total"], body["windows_used"], body["truncated"]) == (1, 1, False)
    assert body["prompt_template"] == "This is a sound of {label}."
    assert set(body["timings_ms"]) == {"decode", "features", "audio_embed", "text_embed",
                                       "scores"}
    assert "per_window" not in body


def test_comma_separated_labels_equal_repeated_fields(client: TestClient, short_wav: bytes) -> None:
    repeated = _classify(client, short_wav, labels=LABELS).json()
    comma = _classify(client, short_wav, labels=" dog, rain,speech ,music").json()
    assert _probs(comma) == _probs(repeated)


def test_classify_json_base64(client: TestClient, short_wav: bytes) -> None:
    multipart = _classify(client, short_wav, labels=LABELS).json()
    r = client.post("/classify", json={"audio": base64.b64encode(short_wav).decode(),
                                       "labels": LABELS, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["labels"]) == 2
    assert body["labels"] == multipart["labels"][:2]


def test_base64_wrapped_in_lines_is_taken_and_a_stray_character_named(
        client: TestClient, short_wav: bytes) -> None:
    """What GNU `base64` writes (76-character lines) decodes to the same audio; a character
    outside the alphabet is named with its place."""
    flat = base64.b64encode(short_wav).decode()
    wrapped = "\n".join(flat[i:i + 76] for i in range(0, len(flat), 76)) + "\n"
    answers = [client.post("/classify", json={"audio": a, "labels": LABELS}) for a in
               (flat, wrapped)]
    assert [a.status_code for a in answers] == [200, 200], answers[1].text
    assert answers[0].json()["labels"] == answers[1].json()["labels"]
    bad = client.post("/classify", json={"audio": flat[:100] + "$" + flat[100:],
                                         "labels": LABELS})
    assert bad.status_code == 422
    assert "'$' at character 100" in bad.json()["error"]["message"]


def test_json_label_list_items_keep_their_commas(client: TestClient, short_wav: bytes) -> None:
    audio = base64.b64encode(short_wav).decode()
    listed = client.post("/classify", json={"audio": audio, "labels": ["dog, barking"]})
    assert listed.status_code == 200, listed.text
    assert [s["label"] for s in listed.json()["labels"]] == ["dog, barking"]
    split = client.post("/classify", json={"audio": audio, "labels": "dog, barking"})
    assert sorted(s["label"] for s in split.json()["labels"]) == ["barking", "dog"]


def test_prompt_template_changes_the_text_side(client: TestClient, short_wav: bytes) -> None:
    default = _classify(client, short_wav, labels=LABELS).json()
    custom = _classify(client, short_wav, labels=LABELS,
                       prompt_template="a recording of {label}").json()
    assert custom["prompt_template"] == "a recording of {label}"
    assert _probs(custom) != _probs(default)


def test_per_window_timeline_for_long_audio(client: TestClient) -> None:
    clip = np.concatenate([make_clip(10.0, seed=1), np.zeros(10 * 48_000, np.float32),
                           make_clip(4.0, seed=2)])
    r = _classify(client, wav_bytes(clip), labels=LABELS, per_window="true", top_k="1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["windows_total"], body["windows_used"], body["windows_silent"]) == (3, 2, 1)
    timeline = body["per_window"]
    assert [(w["start_s"], w["end_s"]) for w in timeline] == [(0, 10), (10, 20), (14, 24)]
    assert [w["used"] for w in timeline] == [True, False, True]
    assert timeline[1]["labels"] == [] and len(timeline[0]["labels"]) == 1


def test_long_audio_is_truncated_to_the_classify_limit(clap_models_dir: Path) -> None:
    wav = wav_bytes(make_clip(14.0, seed=5))
    with running_app(models_dir=clap_models_dir, models="clap", classify_max_seconds=12.0,
                     classify_long_audio="truncate", warmup=False) as c:
        body = _classify(c, wav, labels=LABELS).json()
        assert body["truncated"] is True and body["duration_s"] == pytest.approx(12.0)
        assert body["windows_total"] == 2
    with running_app(models_dir=clap_models_dir, models="clap", classify_max_seconds=12.0,
                     classify_long_audio="reject", warmup=False) as c:
        assert _classify(c, wav, labels=LABELS).status_code == 413


def test_embeddings_are_normalised_and_consistent(client: TestClient, short_wav: bytes) -> None:
    audio = client.post("/embed/audio", files={"file": ("clip.wav", short_wav, "audio/wav")})
    assert audio.status_code == 200, audio.text
    a = np.array(audio.json()["data"][0]["embedding"])
    text = client.post("/embed/text", json={"input": [f"This is a sound of {x}." for x in LABELS]})
    assert text.status_code == 200, text.text
    body = text.json()
    assert body["demo"] is True and body["usage"]["prompt_tokens"] > 0
    t = np.array([row["embedding"] for row in body["data"]])
    assert [row["index"] for row in body["data"]] == list(range(len(LABELS)))
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    classified = _classify(client, short_wav, labels=LABELS).json()
    sims = {s["label"]: s["similarity"] for s in classified["labels"]}
    np.testing.assert_allclose([sims[x] for x in LABELS], t @ a, atol=1e-5)
    single = client.post("/embed/text", json={"input": "This is a sound of dog."}).json()
    np.testing.assert_allclose(single["data"][0]["embedding"], t[0], atol=1e-6)


def test_text_cache_counts_hits(client: TestClient, short_wav: bytes) -> None:
    def hits() -> float:
        text = client.get("/metrics").text
        match = re.search(r'audioserve_cache_events_total\{cache="clap_text",event="hit"\} (\S+)',
                          text)
        return float(match.group(1)) if match else 0.0

    _classify(client, short_wav, labels=["kettle", "whistle"])
    before = hits()
    _classify(client, short_wav, labels=["kettle", "whistle"])
    assert hits() == before + 2


def test_concurrent_askers_share_one_text_computation(client: TestClient) -> None:
    def text_items() -> float:
        text = client.get("/metrics").text
        match = re.search(r'audioserve_batch_size_sum\{queue="clap_text"\} (\S+)', text)
        return float(match.group(1)) if match else 0.0

    before = text_items()
    with ThreadPoolExecutor(max_workers=6) as pool:
        bodies = list(pool.map(
            lambda _: client.post("/embed/text", json={"input": "a brand new prompt"}).json(),
            range(6)))
    assert text_items() - before == 1  # one item through the text graph for six askers
    assert all(b["data"] == bodies[0]["data"] for b in bodies)


# -- refusals -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({}, "no labels"),
        ({"labels": "dog,,cat"}, "label 1 is empty"),
        ({"labels": ["dog", "  "]}, "label 1 is empty"),
        ({"labels": ",".join(f"l{i}" for i in range(MAX_LABELS + 1))}, "limit is 8"),
        ({"labels": ["dog", "x" * (MAX_LABEL_CHARS + 1)]}, "41 characters"),
        ({"labels": "dog,dog"}, "duplicate"),
        ({"labels": LABELS, "prompt_template": "no placeholder"}, "placeholder"),
        ({"labels": LABELS, "prompt_template": "{label} {other}"}, "not a valid template"),
        ({"labels": LABELS, "top_k": "0"}, "top_k must be at least 1"),
        ({"labels": LABELS, "top_k": "two"}, "top_k must be a positive integer"),
        ({"labels": LABELS, "per_window": "maybe"}, "per_window must be true or false"),
    ],
)
def test_classify_refusals(client: TestClient, short_wav: bytes, data: dict[str, Any],
                           pattern: str) -> None:
    _error(_classify(client, short_wav, **data), 422, pattern)


def test_json_refusals(client: TestClient) -> None:
    _error(client.post("/classify", json={"labels": LABELS}), 422, "needs `audio`")
    audio = base64.b64encode(wav_bytes(make_clip(1.0, seed=3))).decode()
    _error(client.post("/classify", json={"audio": audio, "labels": [1, 2]}), 422,
           "must be strings")
    _error(client.post("/classify", json={"audio": audio, "labels": LABELS, "top_k": 1.5}),
           422, "positive integer")
    r = client.post("/classify", content=b"raw", headers={"content-type": "audio/wav"})
    assert r.status_code == 415


def test_upload_over_the_body_limit_is_413_naming_the_setting(clap_models_dir: Path) -> None:
    with running_app(models_dir=clap_models_dir, models="clap", max_upload_bytes=4096,
                     warmup=False) as c:
        big = b"x" * 200_000  # over 4096 * 4/3 + 64 KiB of JSON
        for content_type in ("multipart/form-data; boundary=x", "application/json"):
            r = c.post("/classify", content=big, headers={"content-type": content_type})
            _error(r, 413, "AUDIOSERVE_MAX_UPLOAD_BYTES")


def test_undecodable_audio_is_415(client: TestClient) -> None:
    r = _classify(client, b"this is not audio at all" * 10, labels=LABELS)
    assert r.status_code == 415, r.text


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ({"input": []}, "empty"),
        ({"input": ["ok", ""]}, "input 1 is empty"),
        ({"input": ["x"] * (MAX_LABELS + 1)}, "limit is 8"),
        ({"input": "y" * (MAX_LABEL_CHARS + 1)}, "41 characters"),
        ({"texts": ["a"]}, "input"),
        ({"input": "a", "encoding_format": "base64"}, "only 'float'"),
    ],
)
def test_embed_text_refusals(client: TestClient, body: dict[str, Any], pattern: str) -> None:
    _error(client.post("/embed/text", json=body), 422, pattern)


def test_pack_missing_a_constant_fails_start_up_naming_it(clap_models_dir: Path,
                                                           tmp_path: Path) -> None:
    shutil.copytree(clap_models_dir / "clap", tmp_path / "clap")
    manifest = tmp_path / "clap" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["constants"]["hop_length"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(PackError, match="hop_length"), running_app(models_dir=tmp_path):
        pass


# -- batching does not change answers -------------------------------------------------------

def test_same_answer_alone_and_inside_a_concurrent_burst(client: TestClient) -> None:
    target = wav_bytes(make_clip(3.0, seed=21))
    alone = _classify(client, target, labels=LABELS).json()

    def batch_sizes() -> tuple[float, float]:
        text = client.get("/metrics").text
        total = re.search(r'audioserve_batch_size_sum\{queue="clap_audio"\} (\S+)', text)
        count = re.search(r'audioserve_batch_size_count\{queue="clap_audio"\} (\S+)', text)
        assert total and count
        return float(total.group(1)), float(count.group(1))

    others = [wav_bytes(make_clip(1.0 + i * 0.7, seed=100 + i)) for i in range(12)]
    jobs: list[tuple[bytes, list[str]]] = [(target, LABELS)] * 4
    jobs += [(wav, ["bird", "engine", f"label {i}"]) for i, wav in enumerate(others)]
    before = batch_sizes()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: _classify(client, job[0], labels=job[1]), jobs))
    after = batch_sizes()
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    items, batches = after[0] - before[0], after[1] - before[1]
    assert items == 16 and batches < 16, f"no batching happened: {items} items, {batches} batches"
    exact = alone["provider"] == "cpu"  # fp32 on ORT CPU is bit-identical at any batch size
    for r in results[:4]:
        burst = r.json()
        assert [s["label"] for s in burst["labels"]] == [s["label"] for s in alone["labels"]]
        for key in ("probability", "similarity"):
            np.testing.assert_allclose([s[key] for s in burst["labels"]],
                                       [s[key] for s in alone["labels"]],
                                       rtol=0, atol=0 if exact else 1e-6)


def test_models_and_metrics_show_the_batching_in_force(clap_models_dir: Path) -> None:
    with running_app(models_dir=clap_models_dir, models="clap", max_batch_size=4,
                     batch_workers=2) as c:
        audio = c.get("/v1/models").json()["data"][0]["batching"]["audio"]
        assert audio["max_batch_size"] == 4 and audio["workers"] == 2 and audio["adaptive"]
        assert audio["size_limit"] in (1, 2, 4)  # calibrated at start-up
        assert _classify(c, wav_bytes(make_clip(2.0, seed=5)), labels=LABELS).status_code == 200
        limit = re.search(r'audioserve_batch_size_limit\{queue="clap_audio"\} (\S+)',
                          c.get("/metrics").text)
        assert limit and float(limit.group(1)) == audio["size_limit"]
