"""The app's own surface: health, readiness, metrics, models, auth, errors, limits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import PackError
from service.pipelines import loader as models
from service.settings import Settings
from tests.conftest import running_app, wait_ready, wait_until


def test_an_empty_server_asked_for_is_ready(tmp_path: Path) -> None:
    """`AUDIOSERVE_MODELS=none`: no model on purpose (health, docs, page), ready."""
    with running_app(models_dir=tmp_path, models="none") as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "models": [], "expected": []}
        assert client.get("/v1/models").json() == {"object": "list", "data": []}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'audioserve_requests_total{route="/readyz",status="200"}' in metrics.text


def test_request_id_is_echoed_or_made(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none") as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
            "x-request-id"
        ] == "abc-123"
        made = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
        assert made.headers["x-request-id"] != "bad id\twith junk"
        assert len(made.headers["x-request-id"]) == 16


def test_unknown_route_and_missing_model_use_the_error_shape(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none") as client:
        missing = client.get("/no/such/route")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert missing.json()["error"]["request_id"] == missing.headers["x-request-id"]


def test_api_key_guards_everything_but_health(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none", api_key="s3cret") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_no_api_key_means_open(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none") as client:
        assert client.get("/v1/models").status_code == 200


def test_oversized_json_body_is_refused_before_parsing(tmp_path: Path) -> None:
    """The JSON routes take `max_json_bytes` (the upload routes' own limit: test_clap_api)."""
    with running_app(models_dir=tmp_path, models="none", max_json_bytes=2048) as client:
        small_json = b'{"text": "' + b"x" * 4000 + b'"}'
        for path in ("/tts", "/v1/voices", "/embed/text"):
            response = client.post(path, content=small_json,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 413, path
            assert "AUDIOSERVE_MAX_JSON_BYTES" in response.json()["error"]["message"]


def _write_manifest(folder: Path, **fields: object) -> None:
    folder.mkdir(parents=True)
    manifest = {
        "format_version": 1,
        "kind": folder.name,
        "source": "test",
        "graphs": {"audio": {"fp32": {"file": "audio.onnx", "inputs": ["x"], "outputs": ["y"]}}},
    }
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _start(models_dir: Path, **overrides: object) -> None:
    settings = Settings(_env_file=None, models_dir=models_dir, load_in_background=False,
                        **overrides)
    with TestClient(create_app(settings)):
        pass


def test_pack_without_manifest_fails_startup_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "clap").mkdir()
    with pytest.raises(PackError, match=r"clap/manifest\.json"):
        _start(tmp_path)


def test_pack_of_another_format_version_fails_startup(tmp_path: Path) -> None:
    _write_manifest(tmp_path / "clap", format_version=99)
    with pytest.raises(PackError, match="format_version 99"):
        _start(tmp_path)


def test_partial_pack_fails_startup_naming_the_missing_graph(tmp_path: Path) -> None:
    _write_manifest(tmp_path / "clap")
    with pytest.raises(PackError, match=r"audio\.onnx, which is missing"):
        _start(tmp_path)


def test_no_pack_found_fails_startup_naming_the_folder(tmp_path: Path) -> None:
    """A missing or mistyped models folder must not give a server that is ready with no
    model (every model route 503): start-up fails, naming where it looked."""
    with pytest.raises(PackError, match=r"no model packs: .*mistyped \(AUDIOSERVE_MODELS_DIR\) "
                                        r"does not exist.*AUDIOSERVE_MODELS=none"):
        _start(tmp_path / "mistyped")
    (tmp_path / "voices").mkdir()
    with pytest.raises(PackError, match=r"holds none of clap/, emotion2vec/, chattts/"):
        _start(tmp_path)


def test_models_setting_is_checked_when_read(tmp_path: Path) -> None:
    assert Settings(_env_file=None, models=" Clap, emotion2vec,clap").models == "clap,emotion2vec"
    assert Settings(_env_file=None, models="NONE").wanted_models() == []
    assert Settings(_env_file=None).wanted_models() is None
    with pytest.raises(ValueError, match="clapp is not a model; allowed: auto, none"):
        Settings(_env_file=None, models="clapp")


def test_a_model_not_asked_for_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with running_app(models_dir=tmp_path, models="none") as client:
        refused = client.post("/embed/text", json={"input": "a dog"})
        assert refused.status_code == 503
        message = refused.json()["error"]["message"]
        assert "not served here: AUDIOSERVE_MODELS=none" in message
        assert "python -m export" not in message  # no advice to build what is not wanted


def test_ready_means_every_model_asked_for() -> None:
    status = models.LoaderStatus(models.LoadState.READY, models=["clap"],
                                 expected=["clap", "emotion2vec"], unhealthy=[], error=None)
    assert not status.ready
    assert replace(status, expected=["clap"]).ready
    assert not replace(status, expected=["clap"], unhealthy=["clap"]).ready


def test_named_model_without_pack_fails_startup(tmp_path: Path) -> None:
    with pytest.raises(PackError, match=r"emotion2vec/manifest\.json"):
        _start(tmp_path, models="emotion2vec")


def test_unloadable_graph_keeps_serving_health_and_reports_not_ready(tmp_path: Path) -> None:
    _write_manifest(tmp_path / "clap")
    (tmp_path / "clap" / "audio.onnx").write_bytes(b"not an onnx graph")
    settings = Settings(_env_file=None, models_dir=tmp_path, load_in_background=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        wait_until(lambda: client.get("/readyz").json()["status"] != "loading",
                   "the failed load to be reported", interval_s=0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["status"], body["models"], body["expected"]) == ("failed", [], ["clap"])
        assert "audio.onnx" in body["error"]
        refused = client.post("/embed/text", json={"input": "a dog"})
        assert refused.status_code == 503
        message = refused.json()["error"]["message"]
        assert "'clap' failed to load: cannot load ONNX graph" in message
        assert "audio.onnx" in message and "python -m export" not in message


def test_wait_ready_helper_sees_an_empty_service_ready(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, models_dir=tmp_path, models="none",
                        load_in_background=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)


@pytest.mark.parametrize(
    ("overrides", "provider", "concurrent", "expected"),
    [
        ({}, "cpu", True, (2, 1)),  # two single-threaded workers on the 2-core default
        ({}, "cuda", True, (1, 0)),
        ({}, "cpu", False, (1, 0)),  # ChatTTS: one step loop with every core
        ({"batch_workers": 3, "intra_op_threads": 4}, "cpu", True, (3, 4)),
    ],
)
def test_batch_workers_and_threads_per_model(monkeypatch: pytest.MonkeyPatch,
                                             overrides: dict[str, int], provider: str,
                                             concurrent: bool, expected: tuple[int, int]) -> None:
    monkeypatch.setattr(models, "cpu_cores", lambda: 2)
    settings = Settings(_env_file=None, **overrides)
    assert models.parallelism(settings, provider, concurrent) == expected
