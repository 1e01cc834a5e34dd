"""What a client sends is bounded before it is validated, and what it is told is bounded
too, on every route and both WebSockets: every list a request or message takes has a
`maxItems` (pydantic stops there, before the items), a body's or message's elements are
counted before parsing, and an error lists a few problems and counts the rest. (200,000
nulls in one list had made a 34 MB 422 after 5 s of validation on the event loop.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from service.app import create_app
from service.errors import MAX_MESSAGE_CHARS, MAX_PROBLEMS, capped, join_problems
from service.live import protocol as live_protocol
from service.live import speech_protocol
from service.settings import MAX_LIST_ITEMS, Settings
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401  (fixtures)
from tests.clap_fixtures import clap_models_dir  # noqa: F401
from tests.conftest import packs_dir
from tests.tts_server import RunningServer, serve_app


def _arrays_without_bound(schema: Any, defs: dict[str, Any], where: str,
                          seen: set[str]) -> Iterator[str]:
    """Paths of the arrays in `schema` (refs followed once) that have no maxItems."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                yield from _arrays_without_bound(defs[name], defs, name, seen)
            return
        if schema.get("type") == "array" and "maxItems" not in schema:
            yield where
        for key, value in schema.items():
            yield from _arrays_without_bound(value, defs, f"{where}.{key}", seen)
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _arrays_without_bound(value, defs, f"{where}[{i}]", seen)


def test_every_list_a_route_takes_is_bounded(tmp_path: Path) -> None:
    spec = create_app(Settings(models_dir=tmp_path)).openapi()
    defs = spec["components"]["schemas"]
    bodies = 0
    unbounded: list[str] = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                bodies += 1
                unbounded += _arrays_without_bound(media["schema"], defs,
                                                   f"{method.upper()} {path}", set())
            for param in operation.get("parameters", []):
                unbounded += _arrays_without_bound(param.get("schema"), defs,
                                                   f"{path} {param['name']}", set())
    assert bodies >= 10  # the walk found the request bodies
    assert unbounded == []


@pytest.mark.parametrize("messages", [live_protocol.CLIENT_MESSAGES,
                                      speech_protocol.CLIENT_MESSAGES])
def test_every_list_a_websocket_message_takes_is_bounded(messages: Any) -> None:
    schema = messages.json_schema()
    assert list(_arrays_without_bound(schema, schema.get("$defs", {}), "message", set())) == []


def test_settings_that_count_list_items_stay_within_the_bound() -> None:
    for name in ("max_labels", "max_embed_audio_inputs"):
        with pytest.raises(ValueError, match=name):
            Settings(**{name: MAX_LIST_ITEMS + 1})


def test_an_error_lists_a_few_problems_and_counts_the_rest() -> None:
    assert join_problems(["a", "b"], 2) == "a; b"
    many = join_problems([f"p{i}" for i in range(MAX_PROBLEMS)], 9000)
    assert many.endswith(f"; and {9000 - MAX_PROBLEMS} more") and "p4" in many
    long = capped("x" * (MAX_MESSAGE_CHARS + 10))
    assert long.startswith("x" * MAX_MESSAGE_CHARS) and long.endswith("(10 more characters)")


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, chattts_models_dir: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = packs_dir(tmp_path_factory, "bounds_models", clap=clap_models_dir,
                     chattts=chattts_models_dir)
    with serve_app(models_dir=root, models="clap,chattts", intra_op_threads=1,
                   warmup=False) as s:
        yield s


def _post(server: RunningServer, path: str, body: str) -> httpx.Response:
    return httpx.post(server.url + path, content=body, timeout=30,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize("path,template", [
    ("/embed/text", '{"input": [%s]}'),
    ("/v1/embeddings", '{"model": "clap", "input": [%s]}'),
])
def test_a_long_list_of_bad_items_gets_a_short_422(server: RunningServer, path: str,
                                                   template: str) -> None:
    r = _post(server, path, template % ",".join(["null"] * 9000))
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert f"at most {MAX_LIST_ITEMS} items" in message and len(message) < 2000


def test_many_unknown_fields_get_a_short_422(server: RunningServer) -> None:
    fields = {f"field_{i}_" + "k" * 3000: 0 for i in range(200)}
    r = _post(server, "/embed/text", json.dumps({"input": "a dog", **fields}))
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "more characters" in message and message.endswith("; and 195 more")
    assert len(message) <= MAX_MESSAGE_CHARS


def test_a_body_of_more_elements_than_any_route_takes_is_refused_unparsed(
        server: RunningServer) -> None:
    nulls = ",".join(["null"] * 200_000)
    r = _post(server, "/embed/text", f'{{"input": [{nulls}]}}')
    assert r.status_code == 400, r.text
    assert "AUDIOSERVE_JSON_MAX_ITEMS" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,message", [
    ("/v1/audio/analysis/stream",
     '{"type": "session.config", "input": {"format": "pcm_s16le", "sample_rate": 16000}, '
     '"classify": {"labels": [%s]}}'),
    ("/v1/audio/speech/stream", '{"type": "session.config", "speaker_embedding": [%s]}'),
])
def test_a_websocket_message_is_held_to_the_same_bounds(server: RunningServer, path: str,
                                                        message: str) -> None:
    kwargs: dict[str, Any] = ({"subprotocols": [live_protocol.PROTOCOL]}
                              if "analysis" in path else {})
    with connect(f"ws://{server.host}:{server.port}{path}", **kwargs) as ws:
        ws.send(message % ",".join(["null"] * 12_000))
        event = json.loads(ws.recv(timeout=30))
    assert event["code"] == "invalid_message", event
    assert "AUDIOSERVE_JSON_MAX_ITEMS" in event["message"] and "the message" in event["message"]
