"""The seam in one process and its Ray error translation: every model response names the
replica behind it (also when the answer came from the text cache), and Ray's faults become
this service's errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from batcher import Overloaded
from service.seam.handoff import LocalEngine, LocalQueue
from service.tts.engine import GenerationEngine
from tests.clap_fixtures import clap_models_dir, make_clip, wav_bytes  # noqa: F401
from tests.conftest import running_app
from tests.tools import require_module


@pytest.fixture(scope="module")
def client(clap_models_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    with running_app(models_dir=clap_models_dir, models="clap", warmup=False) as c:
        yield c


def test_local_seam_is_the_batcher_itself(client: TestClient) -> None:
    pipeline = client.app.state.pipelines["clap"]  # type: ignore[attr-defined]
    assert isinstance(pipeline._audio_batcher, LocalQueue)
    assert pipeline._audio_batcher.name == "clap_audio"
    assert client.app.state.seam.runs_models  # type: ignore[attr-defined]
    assert issubclass(LocalEngine, GenerationEngine)


def test_every_model_response_names_its_replica(client: TestClient) -> None:
    wav = wav_bytes(make_clip(2.0, seed=1))
    first = client.post("/embed/text", json={"input": ["a seam test prompt"]})
    cached = client.post("/embed/text", json={"input": ["a seam test prompt"]})
    audio = client.post("/embed/audio", files={"file": ("a.wav", wav)})
    classify = client.post("/classify", files={"file": ("a.wav", wav)},
                           data={"labels": ["a seam test prompt"]})
    for r in (first, cached, audio, classify):
        assert r.status_code == 200, r.text
        assert r.headers["x-audioserve-replica"] == "clap#local"
    assert "x-audioserve-replica" not in client.get("/healthz").headers
    models = client.get("/v1/models").json()["data"]
    assert models[0]["replicas"] == [{"id": "clap#local", "healthy": True}]


def test_ray_faults_become_service_errors() -> None:
    require_module("ray.serve", "the `cluster` extra: pip install -e '.[cluster]'")
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError

    from service.cluster.remote import ReplicaUnavailable, translate
    from service.errors import to_api_error

    shed = translate(BackPressureError(3, 2, retry_after_s=2.0), "clap")
    assert isinstance(shed, Overloaded) and shed.retry_after_s == 2.0
    api = to_api_error(shed)
    assert api is not None and (api.status, api.headers["Retry-After"]) == (503, "2")
    gone = translate(ray_errors.ActorDiedError(), "clap")
    assert isinstance(gone, ReplicaUnavailable) and gone.status == 503
    assert gone.headers["Retry-After"] == "1"
    own = Overloaded("clap_audio queue is full", retry_after_s=3.0)
    wrapped = ray_errors.RayTaskError("submit", "traceback", own)
    assert translate(wrapped, "clap") is own  # the replica's own 503, as raised there
    wrapped_gone = ray_errors.RayTaskError("submit", "tb", ray_errors.ActorDiedError())
    assert isinstance(translate(wrapped_gone, "clap"), ReplicaUnavailable)
    other = ValueError("bad job")
    assert translate(other, "clap") is other
