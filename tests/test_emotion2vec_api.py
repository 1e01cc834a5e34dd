"""POST /emotion through the real app (lifespan, batcher, ORT) on real speech and generated
audio: utterance and frame responses, chunked long audio, trimming, and the 4xx cases."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from export.emotion2vec import OUTPUTS
from service.pipelines.emotion2vec_post import softmax
from tests.conftest import running_app
from tests.emotion2vec_fixtures import (  # noqa: F401  (fixtures)
    SR,
    emotion_models_dir,
    frames_for,
    make_clip,
    speech_files,
    wav_bytes,
)

CHUNK_S = 2.0
MAX_S = 10.0


@pytest.fixture(scope="module")
def client(emotion_models_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    with running_app(models_dir=emotion_models_dir, models="emotion2vec",
                     emotion_chunk_seconds=CHUNK_S, emotion_max_seconds=MAX_S,
                     max_wait_ms=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def graph(emotion_models_dir: Path) -> ort.InferenceSession:  # noqa: F811
    path = emotion_models_dir / "emotion2vec" / "model.fp32.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _post(client: TestClient, data: bytes, **fields: Any) -> Any:
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/emotion", files={"file": ("clip.wav", data)}, data=form)


def _alone(graph: ort.InferenceSession, samples: np.ndarray) -> dict[str, np.ndarray]:
    outs = graph.run(OUTPUTS, {"waveform": samples[None].astype(np.float32),
                               "lengths": np.array([len(samples)], np.int64)})
    return {k: v[0] for k, v in zip(OUTPUTS, outs, strict=True)}


def _check_scores(body: dict[str, Any]) -> None:
    scores = body["scores"]
    assert len(scores) == 9
    assert {s["label"] for s in scores} >= {"angry", "happy", "sad", "unknown"}
    probs = [s["score"] for s in scores]
    assert probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1.0) < 1e-4
    assert body["emotion"] == scores[0] and body["emotion"]["emoji"]


def test_utterance_on_real_speech(client: TestClient, graph: ort.InferenceSession,
                                  speech_files: list[Path]) -> None:  # noqa: F811
    path = speech_files[0]
    response = _post(client, path.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["demo"], body["granularity"]) == ("emotion2vec", True,
                                                                 "utterance")
    assert "random weights" in body["warning"]
    _check_scores(body)
    assert {"decode", "trim", "inference", "postprocess", "total"} <= set(body["timings_ms"])
    info = sf.info(str(path))
    assert abs(body["duration_s"] - info.frames / info.samplerate) < 0.01
    assert "embedding" not in body and "frames" not in body


def test_frame_timeline_on_real_speech(
    client: TestClient, speech_files: list[Path]  # noqa: F811
) -> None:
    for path in speech_files[:2]:
        body = _post(client, path.read_bytes(), granularity="frame", trim_silence=True).json()
        frames, analysed = body["frames"], body["analysed"]
        assert analysed["trimmed"] and 0 <= analysed["start_s"] < analysed["end_s"]
        assert analysed["end_s"] <= body["duration_s"] + 1e-6
        assert frames["frame_rate"] == 50.0 and len(frames["labels"]) == 9
        assert len(frames["scores"]) == len(frames["times_s"])
        assert all(abs(sum(row) - 1) < 1e-3 for row in frames["scores"])
        _check_segments(frames["segments"], analysed["start_s"], analysed["end_s"])


def _check_segments(segments: list[dict[str, Any]], start: float, end: float) -> None:
    assert segments[0]["start_s"] == pytest.approx(start, abs=1e-4)
    assert segments[-1]["end_s"] == pytest.approx(end, abs=1e-4)
    for a, b in itertools.pairwise(segments):
        assert a["end_s"] == b["start_s"] and a["label"] != b["label"]
    assert all(s["start_s"] < s["end_s"] for s in segments)


def test_long_audio_is_chunked_and_merged(client: TestClient, graph: ort.InferenceSession,
                                          emotion_models_dir: Path) -> None:  # noqa: F811
    clip = make_clip(5.3, seed=1)  # 3 chunks of 2 s at most
    body = _post(client, wav_bytes(clip), granularity="frame", return_embedding=True).json()
    assert body["chunks"] == 3 and "mean of chunk embeddings" in body["merge"]
    size = -(-len(clip) // 3)
    pieces = [clip[i * size : (i + 1) * size] for i in range(3)]
    alone = [_alone(graph, p) for p in pieces]
    # frame timeline: every chunk's frames, times from each chunk's start
    times = np.array(body["frames"]["times_s"])
    assert len(times) == sum(frames_for(len(p)) for p in pieces)
    first = frames_for(len(pieces[0]))
    assert times[first] == pytest.approx(size / SR, abs=1e-4)
    np.testing.assert_allclose(np.array(body["frames"]["scores"][:first]),
                               softmax(alone[0]["frame_logits"][:first]), atol=2e-4)
    # utterance: frame-weighted mean of the chunk embeddings, then the head
    weights = np.array([frames_for(len(p)) for p in pieces], np.float64)
    embedding = sum(w * a["embedding"] for w, a in zip(weights, alone, strict=True)) / weights.sum()
    np.testing.assert_allclose(body["embedding"], embedding, atol=1e-4)
    head = np.load(emotion_models_dir / "emotion2vec" / "head.npy")
    probs = softmax(head[:, :-1] @ embedding + head[:, -1])
    by_label = {s["label"]: s["score"] for s in body["scores"]}
    order = ["angry", "disgusted", "fearful", "happy", "neutral", "other", "sad",
             "surprised", "unknown"]
    np.testing.assert_allclose([by_label[k] for k in order], probs, atol=1e-4)
    _check_segments(body["frames"]["segments"], 0.0, body["duration_s"])


def test_concurrent_requests_match_requests_alone(client: TestClient,
                                                  graph: ort.InferenceSession) -> None:
    clips = [make_clip(s, seed=i) for i, s in enumerate((1.9, 0.7, 1.3, 0.05, 1.0))]
    with ThreadPoolExecutor(len(clips)) as pool:
        bodies = list(pool.map(lambda c: _post(client, wav_bytes(c)).json(), clips))
    for clip, body in zip(clips, bodies, strict=True):
        expected = softmax(_alone(graph, clip)["logits"].astype(np.float64))
        got = {s["label"]: s["score"] for s in body["scores"]}
        assert max(got.values()) == pytest.approx(float(expected.max()), abs=1e-4)
        assert sorted(got.values()) == pytest.approx(sorted(expected.tolist()), abs=1e-4)
    metrics = client.get("/metrics").text  # the batcher reported its padding for this queue
    assert 'audioserve_batch_padding_fraction_count{queue="emotion2vec"}' in metrics


def _batch_sizes(metrics: str) -> dict[str, float]:
    """The emotion2vec queue's batch-size histogram: cumulative counts by bucket (`le`)."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("audioserve_batch_size_bucket{") and 'queue="emotion2vec"' in line:
            counts[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return counts


def test_the_batch_budget_bounds_every_batch_and_changes_no_result(
        client: TestClient, emotion_models_dir: Path) -> None:  # noqa: F811
    """With EMOTION_MAX_BATCH_SECONDS at two chunks, five chunks queued at once never run
    more than two to a batch (the old batcher cut them 3 + 2 on two idle workers), and the
    answer is the one the unbudgeted service gives."""
    clip = make_clip(9.5, seed=4)  # 5 chunks of 1.9 s
    with running_app(models_dir=emotion_models_dir, models="emotion2vec",
                     emotion_chunk_seconds=CHUNK_S, emotion_max_batch_seconds=2 * CHUNK_S,
                     adaptive_batch_size=False, max_batch_size=8) as budgeted:
        body = _post(budgeted, wav_bytes(clip), granularity="frame",
                     return_embedding=True).json()
        sizes = _batch_sizes(budgeted.get("/metrics").text)
    assert body["chunks"] == 5
    assert sizes["+Inf"] >= 3 and sizes["2.0"] == sizes["+Inf"], sizes  # all within 2
    free = _post(client, wav_bytes(clip), granularity="frame", return_embedding=True).json()
    np.testing.assert_allclose(body["embedding"], free["embedding"], atol=1e-5)
    np.testing.assert_allclose(body["frames"]["scores"], free["frames"]["scores"], atol=1e-5)
    assert [s["label"] for s in body["scores"]] == [s["label"] for s in free["scores"]]


def test_json_base64_with_embedding(client: TestClient) -> None:
    audio = base64.b64encode(wav_bytes(make_clip(1.0, seed=7))).decode()
    response = client.post("/emotion", json={"audio": audio, "return_embedding": True})
    assert response.status_code == 200, response.text
    assert len(response.json()["embedding"]) == 32  # the tiny config's embed_dim


def test_trim_silence_finds_the_voiced_part(client: TestClient) -> None:
    clip = np.concatenate([np.zeros(SR, np.float32), make_clip(1.0, seed=3),
                           np.zeros(SR, np.float32)])
    body = _post(client, wav_bytes(clip), trim_silence=True, granularity="frame").json()
    assert body["analysed"]["start_s"] == pytest.approx(0.9, abs=0.03)
    assert body["analysed"]["end_s"] == pytest.approx(2.1, abs=0.03)
    assert body["frames"]["times_s"][0] == pytest.approx(body["analysed"]["start_s"], abs=1e-4)
    assert body["analysed"]["trimmed"] is True
    untrimmed = _post(client, wav_bytes(clip)).json()["analysed"]
    assert (untrimmed["start_s"], untrimmed["end_s"], untrimmed["trimmed"]) == (0.0, 3.0, False)


@pytest.mark.parametrize(("data", "fields", "status", "needle"), [
    (wav_bytes(np.zeros(399, np.float32)), {}, 422, "400 samples"),
    (wav_bytes(make_clip(MAX_S + 0.5, seed=0)), {}, 413, f"{MAX_S:g} s"),
    (wav_bytes(make_clip(1.0, seed=0)), {"granularity": "word"}, 422, "utterance, frame"),
    (wav_bytes(make_clip(1.0, seed=0)), {"return_embedding": "maybe"}, 422, "true or false"),
    (b"this is not audio at all" * 40, {}, 415, "decode"),
])
def test_refusals(client: TestClient, data: bytes, fields: dict[str, str], status: int,
                  needle: str) -> None:
    response = _post(client, data, **fields)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]
