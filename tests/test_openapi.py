"""The OpenAPI schema is usable: each upload route publishes both request shapes, a
request built from the schema and its example gets a 200, every answer matches the
documented response model field for field, and every error status is documented."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.errors import NonFiniteResult
from service.routes import responses
from tests import openapi_contract
from tests.clap_fixtures import make_clip, wav_bytes
from tests.conftest import packs_dir, running_app

pytest_plugins = ("tests.clap_fixtures", "tests.emotion2vec_fixtures")

UPLOADS = {"/classify": responses.ClassifyAnswer, "/embed/audio": responses.EmbedAudioAnswer,
           "/emotion": responses.EmotionAnswer}


@pytest.fixture(scope="module")
def client(clap_models_dir: Path, emotion_models_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = packs_dir(tmp_path_factory, "openapi_models", clap=clap_models_dir,
                     emotion2vec=emotion_models_dir)
    with running_app(models_dir=root, warmup=False) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    schema: dict[str, Any] = client.get("/openapi.json").json()
    return schema


def _operation(spec: dict[str, Any], path: str) -> dict[str, Any]:
    operation: dict[str, Any] = spec["paths"][path]["post"]
    return operation


def _example_value(prop: dict[str, Any]) -> Any:
    if "examples" in prop:
        return prop["examples"][0]
    return prop.get("default")


def assert_documented(body: Any, model: type[BaseModel], where: str = "") -> None:
    """Every field of the answer is a field of its model, recursively (no undocumented
    drift), and the model validates it."""
    model.model_validate(body)
    for key, value in body.items():
        assert key in model.model_fields, f"{where}{key} is not in {model.__name__}"
        annotation = model.model_fields[key].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        for candidate in inner:
            for sub in getattr(candidate, "__args__", (candidate,)):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    for item in value if isinstance(value, list) else [value]:
                        if isinstance(item, dict):
                            assert_documented(item, sub, f"{where}{key}.")


@pytest.mark.parametrize("path", sorted(UPLOADS))
def test_upload_routes_publish_both_request_shapes(spec: dict[str, Any], path: str) -> None:
    content = _operation(spec, path)["requestBody"]["content"]
    multipart = content["multipart/form-data"]["schema"]
    assert multipart["properties"]["file"] == {**multipart["properties"]["file"],
                                               "type": "string", "format": "binary"}
    assert "file" in multipart["required"]
    as_json = content["application/json"]["schema"]
    assert as_json["properties"]["audio"]["contentEncoding"] == "base64"
    assert set(multipart["properties"]) - {"file"} == set(as_json["properties"]) - {"audio"}


@pytest.mark.parametrize("path", sorted(UPLOADS))
def test_the_json_example_as_published_gets_a_200(client: TestClient, spec: dict[str, Any],
                                                  path: str) -> None:
    example = _operation(spec, path)["requestBody"]["content"]["application/json"]["example"]
    base64.b64decode(example["audio"], validate=True)
    r = client.post(path, json=example)
    assert r.status_code == 200, r.text
    assert_documented(r.json(), UPLOADS[path])


@pytest.mark.parametrize("path", sorted(UPLOADS))
def test_a_multipart_form_built_from_the_schema_gets_a_200(client: TestClient,
                                                           spec: dict[str, Any],
                                                           path: str) -> None:
    """What Swagger UI's "Try it out" sends: the file, and each field's example."""
    schema = _operation(spec, path)["requestBody"]["content"]["multipart/form-data"]["schema"]
    data: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        value = _example_value(prop)
        if name == "file" or value is None:
            continue
        data[name] = (value if isinstance(value, list) else
                      str(value).lower() if isinstance(value, bool) else str(value))
    wav = wav_bytes(make_clip(2.0, seed=4))
    r = client.post(path, files={"file": ("clip.wav", wav, "audio/wav")}, data=data)
    assert r.status_code == 200, r.text
    assert_documented(r.json(), UPLOADS[path])


def test_long_answers_match_their_models(client: TestClient) -> None:
    wav = wav_bytes(make_clip(23.0, seed=9))
    r = client.post("/classify", files={"file": ("a.wav", wav)},
                    data={"labels": "dog,rain", "per_window": "true"})
    assert r.status_code == 200 and len(r.json()["per_window"]) == 3
    assert_documented(r.json(), responses.ClassifyAnswer)
    r = client.post("/emotion", files={"file": ("a.wav", wav)},
                    data={"granularity": "frame", "return_embedding": "true"})
    assert r.status_code == 200 and r.json()["frames"]["scores"]
    assert_documented(r.json(), responses.EmotionAnswer)
    r = client.post("/embed/text", json={"input": ["a dog", "rain"]})
    assert_documented(r.json(), responses.EmbedTextAnswer)


@pytest.mark.parametrize("path", ["/classify", "/embed/audio", "/emotion", "/embed/text"])
def test_every_error_status_is_documented_with_the_error_body(spec: dict[str, Any],
                                                              path: str) -> None:
    documented = _operation(spec, path)["responses"]
    for status in ("401", "413", "422", "503", "504"):
        ref = documented[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody"), (status, ref)
    assert "Retry-After" in documented["503"]["headers"]
    if path != "/embed/text":
        assert "415" in documented


def test_a_non_finite_answer_is_refused_not_sent_as_null() -> None:
    body = {"model": "m", "source": "s", "demo": True, "precision": "fp32", "provider": "cpu",
            "object": "list", "data": [{"object": "embedding", "index": 0,
                                        "embedding": [0.1, float("nan")]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    with pytest.raises(NonFiniteResult):
        responses.render(responses.EmbedTextAnswer, lambda: body)
    body["data"][0]["embedding"] = [0.1, 0.2]  # type: ignore[index]
    assert b'"embedding":[0.1,0.2]' in responses.render(responses.EmbedTextAnswer,
                                                       lambda: body).body


def test_every_answer_is_checked_and_drift_is_caught(client: TestClient) -> None:
    """The suite-wide check (tests/openapi_contract.py) sees the answers and fails on an
    undocumented status or a body of another shape."""
    openapi_contract.check_pending()
    openapi_contract.checked.clear()
    assert client.post("/embed/text", json={"input": "x"}).status_code == 200
    assert client.post("/embed/text", json={"input": ""}).status_code == 422
    assert not openapi_contract.check_pending()
    assert openapi_contract.checked == ["POST /embed/text 200", "POST /embed/text 422"]
    where = (client.app, "/embed/text", "POST", "/embed/text")
    openapi_contract.check(*where, 418, "application/json", b"{}")
    openapi_contract.check(*where, 422, "application/json", b'{"detail": []}')
    openapi_contract.check(*where, 200, "text/plain", b"x")
    found = list(openapi_contract.violations)
    openapi_contract.violations.clear()
    assert len(found) == 3, found
    assert "418: status not documented" in found[0]
    assert "does not match its schema" in found[1]
    assert "content type 'text/plain' not documented" in found[2]
    # headers and trailers: a declared one must match its schema, a trailer be declared
    tts = (client.app, "/tts", "POST", "/tts", 200, "audio/wav", None)
    spans = {"x-audioserve-sentences": "rate=24000; spans=0-10,5-20"}
    openapi_contract.check(*tts, spans, {})
    openapi_contract.check(*tts, {}, spans)
    assert not openapi_contract.violations
    openapi_contract.check(*tts, {"x-audioserve-sentences": "0-10"}, {"x-other": "1"})
    found = list(openapi_contract.violations)
    openapi_contract.violations.clear()
    assert len(found) == 2, found
    assert "trailer 'x-other' not documented" in found[0]
    assert "header x-audioserve-sentences: '0-10' does not match its schema" in found[1]
    # a request the server took must be one its schema allows
    body = (client.app, "/embed/text", "POST", "/embed/text", 200, "application/json",
            client.post("/embed/text", json={"input": "x"}).content, {}, {})
    openapi_contract.check(*body, b'{"input": "x", "encoding_format": "float"}')
    assert not openapi_contract.violations
    openapi_contract.check(*body, b'{"input": "x", "surprise": 1}')
    found = list(openapi_contract.violations)
    openapi_contract.violations.clear()
    assert len(found) == 1 and "the request it took is one its schema refuses" in found[0]


def test_no_route_documents_fastapis_detail_422(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(spec)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            ref = operation["responses"]["500"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith(("/ErrorBody", "/OpenAIErrorBody")), (method, path)
            if "422" in operation["responses"]:
                body = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert body["$ref"].endswith(("/ErrorBody", "/OpenAIErrorBody")), (method, path)


def test_a_security_scheme_only_with_a_key(spec: dict[str, Any]) -> None:
    """Without AUDIOSERVE_API_KEY nothing asks for one (with a key: tests/test_ui_try_it_out.py
    authorizes through the declared bearer scheme)."""
    assert "security" not in spec and "securitySchemes" not in spec["components"]
