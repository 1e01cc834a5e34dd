"""Issue 21 items 10-11 beyond the single-request corpus (tests/test_hostile.py sends
those): a client gone mid-body is a quiet close (499 in the access log, never a 500), a
saved voice deleted while the folder is listed is skipped, and the messages of the small
refusals say what was wrong in the client's terms."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.hostile import multipart, read_response, tone_wav
from service.edge.read_limits import BodyBudget, BodyTooLarge
from service.tts.speaker import SpeakerStats
from service.tts.voices import VoiceStore
from tests.conftest import packs_dir
from tests.tts_server import RunningServer, serve_app

pytest_plugins = ("tests.clap_fixtures", "tests.emotion2vec_fixtures")


@pytest.fixture(scope="module")
def server(clap_models_dir: Path, emotion_models_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = packs_dir(tmp_path_factory, "edge_models", clap=clap_models_dir,
                     emotion2vec=emotion_models_dir)
    with serve_app(models_dir=root, warmup=False) as running:
        yield running


def _statuses(server: RunningServer, route: str) -> dict[str, float]:
    """Requests counted per status for `route` (the app's own metrics)."""
    text = httpx.get(server.url + "/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("audioserve_requests_total{") and f'route="{route}"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("route,content_type", [
    ("/classify", "application/json"), ("/emotion", "multipart/form-data; boundary=x"),
    ("/embed/text", "application/json")])
def test_a_client_gone_mid_body_is_a_quiet_close(server: RunningServer, route: str,
                                                 content_type: str) -> None:
    before = _statuses(server, route)
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + b'{"input": "' + b"a" * 500)
    deadline = time.monotonic() + 30
    while (after := _statuses(server, route)).get("499", 0) == before.get("499", 0):
        assert time.monotonic() < deadline, f"the request never ended: {after}"
        time.sleep(0.02)
    assert after.get("500", 0) == before.get("500", 0), after


def test_top_k_in_unicode_digits_gets_a_plain_message(server: RunningServer) -> None:
    body = multipart([("labels", "dog"), ("labels", "rain"), ("top_k", "²")], tone_wav(1.0))
    answer = httpx.post(server.url + "/classify", content=body, headers={
        "content-type": "multipart/form-data; boundary=hostileBoundary42"})
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert message == "top_k must be a positive integer, not '²'", message


@pytest.mark.parametrize("route,model,minimum", [("/classify", "clap", "samples"),
                                                 ("/emotion", "emotion2vec", "400 samples")])
def test_one_minimum_audio_rule(server: RunningServer, route: str, model: str,
                                minimum: str) -> None:
    fields = [("labels", "dog")] if route == "/classify" else []
    body = multipart(fields, tone_wav(10 / 16_000))
    answer = httpx.post(server.url + route, content=body, headers={
        "content-type": "multipart/form-data; boundary=hostileBoundary42"})
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("audio is ") and "(0.0006 s)" in message  # 10 / 16 kHz
    assert f"{model} needs at least" in message and minimum in message


def test_the_surrogate_refusal_names_the_field(server: RunningServer) -> None:
    answer = httpx.post(server.url + "/embed/text",
                        content=b'{"input": ["dog", "x\\ud800"]}',
                        headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith("input[1] holds a lone UTF-16")


def test_a_voice_deleted_while_listed_is_skipped(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE lands between the folder scan and the file's stat (was a 500)."""
    stats = SpeakerStats(std=np.ones(32, np.float16), mean=np.zeros(32, np.float16))
    store = VoiceStore(tmp_path, stats)
    store.save("kept", seed=1)
    store.save("gone", seed=2)
    real_scandir = os.scandir

    class DeletingScan:
        def __init__(self, path: Any) -> None:
            self.inner = real_scandir(path)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self.inner:
                if entry.name == "gone.json":
                    store.delete("gone")  # after the scan found it, before its stat
                yield entry

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

    monkeypatch.setattr(os, "scandir", DeletingScan)
    names = [v.name for v in store.listing().voices]
    assert "kept" in names and "gone" not in names
    monkeypatch.undo()
    assert json.loads((tmp_path / "kept.json").read_text())["name"] == "kept"


MIN_RATE = 1000
"""The budget server's AUDIOSERVE_BODY_MIN_RATE (bytes/s)."""


@pytest.fixture(scope="module")
def budget_server(clap_models_dir: Path) -> Iterator[RunningServer]:
    # a 1 MiB budget holds the largest body the routes then take (start-up checks it)
    with serve_app(models_dir=clap_models_dir, models="clap", warmup=False,
                   max_body_bytes_in_flight=2**20, max_upload_bytes=700_000,
                   body_min_rate=MIN_RATE) as running:
        yield running


def _post(server: RunningServer, body: bytes) -> httpx.Response:
    return httpx.post(server.url + "/classify", content=body, timeout=30,
                      headers={"content-type": "application/json"})


def test_a_body_larger_than_the_whole_budget_is_413_unread(
        budget_server: RunningServer) -> None:
    """Over the route's limit (which start-up keeps within the budget): 413 by its
    Content-Length, before the body is read; a budget asked for more than it holds says
    so (the settings never let a route's body get there)."""
    with socket.create_connection((budget_server.host, budget_server.port)) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 2000000\r\n\r\n{")
        status, _, body = read_response(sock)  # answered without the rest of the body
    assert status == 413, body[:200]
    assert b"AUDIOSERVE_MAX_UPLOAD_BYTES" in body
    budget = BodyBudget(2**20)
    with pytest.raises(BodyTooLarge, match="AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT"):
        budget.take(2**20 + 1)
    assert budget.taken == 0


def test_bodies_share_one_budget_taken_before_reading(budget_server: RunningServer) -> None:
    """A holds 700 KB of the 1 MiB budget while it is on pace (10 KB sent: 10 s at the
    minimum rate); B's 500 KB is refused with 503 + Retry-After. Once A falls behind, the
    next body that needs its room takes it: B is served, and A's next byte gets its 408
    (eight bodies that declared 35 MB and dripped a byte had held every upload out)."""
    small = b"{" + b" " * 500_000  # malformed JSON: a 400 once it is read and parsed
    with socket.create_connection((budget_server.host, budget_server.port)) as holder:
        holder.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nContent-Length: 700000\r\n\r\n{"
                       + b" " * (10 * MIN_RATE - 1))
        deadline = time.monotonic() + 10
        while (refused := _post(budget_server, small)).status_code != 503:
            assert refused.status_code == 400, refused.text
            assert time.monotonic() < deadline, "the holder never took its bytes"
        assert refused.headers["retry-after"] == "1"
        assert "AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT" in refused.json()["error"]["message"]
        deadline = time.monotonic() + 60
        while (served := _post(budget_server, small)).status_code == 503:
            assert time.monotonic() < deadline, "the slow holder kept its room"
            with contextlib.suppress(OSError):  # a byte now and then: never idle, behind
                holder.sendall(b" ")
        assert served.status_code == 400
        with contextlib.suppress(OSError):
            holder.sendall(b" ")
        status, _, body = read_response(holder)
    assert status == 408, body[:300]
    assert b"AUDIOSERVE_BODY_MIN_RATE" in body and b"slower than" in body


def test_a_json_route_says_what_a_body_without_type_or_bytes_lacks(
        server: RunningServer) -> None:
    """No content type: 415 naming the one to send (FastAPI's strict content type had made
    it 422 "Input should be a valid dictionary"); an empty body: 422 saying it is empty
    ("Field required" named nothing)."""
    untyped = httpx.post(server.url + "/embed/text", content=b'{"input": "a dog"}',
                         headers={"content-type": ""}, timeout=30)
    assert untyped.status_code == 415, untyped.text
    assert "no content type" in untyped.json()["error"]["message"]
    empty = httpx.post(server.url + "/embed/text", content=b"", timeout=30,
                       headers={"content-type": "application/json"})
    assert empty.status_code == 422, empty.text
    assert "body is empty" in empty.json()["error"]["message"]


@pytest.mark.parametrize("route,body", [
    ("/embed/text", {"input": ["a dog"]}),
    ("/v1/embeddings", {"model": "clap", "input": "a dog"}),
])
def test_a_json_route_given_a_form_says_which_content_type(server: RunningServer, route: str,
                                                           body: dict[str, Any]) -> None:
    r = httpx.post(server.url + route, content=json.dumps(body).encode(), timeout=30,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415, r.text
    assert "'application/x-www-form-urlencoded'" in r.json()["error"]["message"]
    assert "application/json" in r.json()["error"]["message"]
    assert httpx.post(server.url + route, json=body, timeout=60).status_code == 200
