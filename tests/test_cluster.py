"""audioserve on a real two-node Ray cluster (`ray.cluster_utils.Cluster`) with 2 CLAP
replicas, against the single-process app on the same inputs: the same answers, both
replicas used, faults and overload ending in this service's JSON errors, a disconnected
stream freeing its replica's engine slot. One cluster for the whole module (Ray's own
processes are heavy); it and every process it started are gone when the module ends."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")

from bench.hostile import MULTIPART, multipart, read_response, tone_wav
from service.settings import Settings
from tests.chattts_fixtures import chattts_models_dir  # noqa: F401
from tests.clap_fixtures import clap_models_dir, make_clip, wav_bytes  # noqa: F401
from tests.conftest import HANG_S, running_app, wait_until
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.emotion2vec_fixtures import make_clip as speech_clip
from tests.emotion2vec_fixtures import wav_bytes as speech_wav
from tests.h11_client import post_json
from tests.ray_cluster import RayAudioserve, processes_under, ray_audioserve

DEADLINE_S = 15.0
LABELS = ["dog", "rain", "speech"]
SETTINGS = dict(warmup=False, request_timeout_s=DEADLINE_S, intra_op_threads=1,
                batch_workers=1, tts_stream_chunk_tokens=8, max_wait_ms=5.0,
                tts_max_active=2,  # long texts' pieces take turns: streams last a while
                emotion_chunk_seconds=130.0,  # a 120 s chunk: one 7.7 MB item on the wire
                # short reading limits, so the test of them behind HAProxy is quick
                header_timeout_s=2.0, body_idle_timeout_s=2.0, tts_stream_stall_timeout_s=3.0,
                max_header_fields=50)  # under HAProxy's own 100, so the ingress's cap shows
SENTENCE = "This sentence is one of many that make a long text to speak. "
CLUSTER = {
    "ingress": {"num_cpus": 0.25},
    # two CLAP replicas, one per node
    "clap": {"replicas": 2, "num_cpus": 0.25, "max_replicas_per_node": 1},
    # one replica that takes one item at a time and queues one more: the overload case
    "emotion2vec": {"num_cpus": 0.25, "max_ongoing_requests": 1, "max_queued_requests": 1},
    "chattts": {"num_cpus": 0.25},
    "health_interval_s": 0.5,
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, clap_models_dir: Path,  # noqa: F811
               emotion_models_dir: Path, chattts_models_dir: Path) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("all_models")
    for source in (clap_models_dir / "clap", emotion_models_dir / "emotion2vec",
                   chattts_models_dir / "chattts"):
        (root / source.name).symlink_to(source)
    return root


@pytest.fixture(scope="module")
def settings(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(_env_file=None, models_dir=models_dir, load_in_background=True,
                    voices_dir=tmp_path_factory.mktemp("voices"), **SETTINGS)


@pytest.fixture(scope="module")
def cluster(settings: Settings) -> Iterator[RayAudioserve]:
    with ray_audioserve(settings, CLUSTER) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def local(settings: Settings) -> Iterator[TestClient]:
    overrides = settings.model_dump(exclude={"load_in_background"})
    with running_app(**overrides) as client:
        yield client


@pytest.fixture(scope="module")
def http(cluster: RayAudioserve) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        yield client


def _without_timings(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_timings(v) for k, v in body.items() if k != "timings_ms"}
    if isinstance(body, list):
        return [_without_timings(v) for v in body]
    return body


def _assert_close(a: Any, b: Any, path: str = "") -> None:
    """Same structure, strings and flags; numbers within 1e-6 (fp32)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, float | int) and abs(a - b) <= 1e-6, (path, a, b)
    else:
        assert a == b, (path, a, b)


def _assert_same_pcm(a: bytes, b: bytes) -> None:
    """The same samples, to the last bit of 16-bit PCM. Windows of several pieces that end
    up in one decoder forward (equal token counts) may differ from a solo forward by
    ~1e-7, which can round to the neighbouring 16-bit value: that happens in one process
    too, as the timing of the pieces decides. A different audio code would move whole
    windows, not one step of one sample."""
    x, y = np.frombuffer(a, "<i2").astype(np.int32), np.frombuffer(b, "<i2").astype(np.int32)
    assert x.shape == y.shape
    assert int(np.abs(x - y).max(initial=0)) <= 1


def _replicas(response: httpx.Response) -> list[str]:
    return [r.strip() for r in response.headers["x-audioserve-replica"].split(",")]


# -- the same answers as one process ------------------------------------------------------

JSON_CASES = [
    ("/classify", {"files": {"file": ("a.wav", wav_bytes(make_clip(12.5, seed=3)))},
                   "data": {"labels": LABELS, "per_window": "true"}}),
    ("/embed/audio", {"files": {"file": ("a.wav", wav_bytes(make_clip(4.0, seed=4)))}}),
    ("/embed/text", {"json": {"input": ["a dog barking", "heavy rain"]}}),
    ("/emotion", {"files": {"file": ("s.wav", speech_wav(speech_clip(3.0, seed=5)))}}),
    ("/emotion", {"files": {"file": ("s.wav", speech_wav(speech_clip(3.0, seed=6)))},
                  "data": {"granularity": "frame", "return_embedding": "true"}}),
    # one item over gRPC's default 4 MiB message between replicas (Ray Serve's default)
    ("/emotion", {"files": {"file": ("s.wav", speech_wav(speech_clip(120.0, seed=7)))}}),
]


@pytest.mark.parametrize(("path", "request_args"), JSON_CASES,
                         ids=["classify", "embed-audio", "embed-text", "emotion", "emotion-frame",
                              "emotion-7.7MB-item"])
def test_json_answers_equal_single_process(http: httpx.Client, local: TestClient, path: str,
                                           request_args: dict[str, Any]) -> None:
    remote = http.post(path, **request_args)
    alone = local.post(path, **request_args)
    assert remote.status_code == alone.status_code == 200, (remote.text, alone.text)
    _assert_close(_without_timings(remote.json()), _without_timings(alone.json()))
    model = "emotion2vec" if path == "/emotion" else "clap"
    assert all(r.startswith(f"{model}#") for r in _replicas(remote))
    assert alone.headers["x-audioserve-replica"] == f"{model}#local"
    assert remote.headers["content-type"] == alone.headers["content-type"]
    assert len(remote.headers.get_list("x-request-id")) == 1


TTS_BODY = {"text": "Hello from the cluster. A second sentence.", "seed": 7,
            "max_new_tokens": 60, "format": "wav"}


def test_tts_whole_equals_single_process(http: httpx.Client, local: TestClient) -> None:
    remote = http.post("/tts", json=TTS_BODY)
    alone = local.post("/tts", json=TTS_BODY)
    assert remote.status_code == alone.status_code == 200, remote.text
    for header in ("x-audioserve-tokens", "x-audioserve-pieces", "x-audioserve-finish-reason",
                   "x-audioserve-sampling-seed", "x-audioserve-sentences"):
        assert remote.headers[header] == alone.headers[header]
    assert remote.content == alone.content  # same codes, decoded by the same graphs
    assert _replicas(remote)[0].startswith("chattts#")


def test_tts_streamed_in_chunks_equals_single_process(cluster: RayAudioserve,
                                                      local: TestClient) -> None:
    body = {**TTS_BODY, "text": SENTENCE * 8, "stream": True, "format": "pcm"}
    chunks: list[bytes] = []
    with httpx.stream("POST", cluster.url + "/tts", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert _replicas(r)[0].startswith("chattts#")  # named before any audio was sent
        assert int(r.headers["x-audioserve-pieces"]) >= 3
        for chunk in r.iter_raw():
            if chunk:
                chunks.append(chunk)
    alone = local.post("/tts", json=body)
    _assert_same_pcm(b"".join(chunks), alone.content)
    assert len(chunks) >= 3, len(chunks)  # sent as generated, not in one write
    # the pieces' spans come after the audio, as a trailer, through HAProxy too
    address = urlsplit(cluster.url)
    answer = post_json(address.hostname or "", address.port or 80, "/tts", body)
    assert answer.complete and answer.headers["trailer"].lower().startswith(
        "x-audioserve-sentences")
    whole = local.post("/tts", json={**body, "stream": False})  # TestClient has no trailers
    assert answer.trailers["x-audioserve-sentences"] == whole.headers["x-audioserve-sentences"]


def test_openai_speech_equals_single_process(http: httpx.Client, local: TestClient) -> None:
    body = {"model": "tts-1", "input": "Speech through the OpenAI route.", "voice": "alloy",
            "response_format": "wav", "stream": False, "seed": 11}
    remote = http.post("/v1/audio/speech", json=body)
    alone = local.post("/v1/audio/speech", json=body)
    assert remote.status_code == alone.status_code == 200, remote.text
    assert remote.content == alone.content
    streamed = http.post("/v1/audio/speech", json={**body, "stream": True,
                                                   "response_format": "pcm"})
    assert streamed.content == local.post("/v1/audio/speech", json={
        **body, "stream": True, "response_format": "pcm"}).content


def test_openai_routes_equal_single_process(http: httpx.Client, local: TestClient) -> None:
    """/v1/embeddings (text and audio), /v1/models/{id} and /v1/audio/voices: the
    cluster's ingress serves the app's routes, with the same answers."""
    clip = base64.b64encode(wav_bytes(make_clip(3.0, seed=8))).decode()
    for body in ({"model": "clap", "input": ["a dog barking"]},
                 {"model": "clap", "input": [clip], "modality": "audio"}):
        remote, alone = http.post("/v1/embeddings", json=body), local.post("/v1/embeddings",
                                                                           json=body)
        assert remote.status_code == alone.status_code == 200, remote.text
        _assert_close(remote.json(), alone.json())
    remote_card = http.get("/v1/models/clap").json()
    local_card = local.get("/v1/models/clap").json()
    for key in ("id", "object", "owned_by", "created", "embed_dim"):
        assert remote_card[key] == local_card[key]
    voice = {"name": "cluster-voice", "type": "prompt", "prompt": "alloy(2)+echo(1)"}
    created = http.post("/v1/audio/voices", json=voice)
    assert created.status_code == 200 and created.json()["id"] == "cluster-voice"
    assert http.delete("/v1/audio/voices/cluster-voice").json()["deleted"] is True


def test_errors_and_openapi_are_the_apps(http: httpx.Client, local: TestClient) -> None:
    cases = [("/classify", {"files": {"file": ("a.wav", b"not audio")},
                            "data": {"labels": ["x"]}}),
             ("/embed/text", {"json": {"input": []}}),
             ("/tts", {"json": {"text": ""}}),
             ("/v1/audio/speech", {"json": {"model": "nope", "input": "hi"}})]
    for path, args in cases:
        remote, alone = http.post(path, **args), local.post(path, **args)
        assert remote.status_code == alone.status_code and remote.status_code in (415, 422)
        r_body, a_body = remote.json(), alone.json()
        r_body["error"].pop("request_id", None)
        a_body["error"].pop("request_id", None)
        assert r_body == a_body
    assert http.get("/openapi.json").json() == local.get("/openapi.json").json()


def test_live_stream_equals_single_process(cluster: RayAudioserve, local: TestClient) -> None:
    """WS /v1/audio/analysis/stream through HAProxy and an ingress replica, the windows and
    utterances computed in the model replicas: the same events as one process."""
    from websockets.sync.client import connect

    silence = np.zeros(16_000, np.float32)
    clip = np.concatenate([silence, speech_clip(3.0, seed=8), silence,
                           speech_clip(2.5, seed=9), silence])
    audio = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
    config = json.dumps({"type": "session.config",
                         "input": {"format": "pcm_s16le", "sample_rate": 16_000},
                         "classify": {"labels": LABELS, "hop_s": 2.0}, "emotion": {}})
    done = json.dumps({"type": "input.done"})
    frames = [audio[i:i + 6_400] for i in range(0, len(audio), 6_400)]

    def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each task's results in order (the two tasks interleave as their work finishes)."""
        kept = [e for e in events if e["type"] in ("classify.window", "emotion.utterance",
                                                   "skipped", "session.done")]
        return sorted(kept, key=lambda e: (e["type"], e.get("task", ""), e.get("index", 0)))

    url = urlsplit(cluster.url)
    with connect(f"ws://{url.netloc}/v1/audio/analysis/stream", open_timeout=60) as ws:
        ws.send(config)
        for frame in frames:
            ws.send(frame)
        ws.send(done)
        remote = [json.loads(m) for m in ws]
    with local.websocket_connect("/v1/audio/analysis/stream") as lws:
        lws.send_text(config)
        for frame in frames:
            lws.send_bytes(frame)
        lws.send_text(done)
        alone = []
        while not alone or alone[-1]["type"] not in ("session.done", "error"):
            alone.append(lws.receive_json())
    assert remote[-1]["type"] == "session.done", remote
    assert any(e["type"] == "emotion.utterance" for e in remote), remote
    _assert_close(results(remote), results(alone))


def test_speech_stream_equals_single_process(cluster: RayAudioserve,
                                             local: TestClient) -> None:
    """WS /v1/audio/speech/stream through HAProxy and an ingress replica, the sentences
    generated in the ChatTTS replica as they arrive: the audio of `/tts` with
    `split: "sentence"` in one process."""
    from websockets.sync.client import connect

    text = "A first sentence for the cluster. Then a second one, and a third ends it."
    url = urlsplit(cluster.url)
    audio, events = bytearray(), []
    with connect(f"ws://{url.netloc}/v1/audio/speech/stream", open_timeout=60) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "alloy", "seed": 3,
                            "response_format": "pcm", "max_new_tokens": 40}))
        for word in text.split(" "):
            ws.send(json.dumps({"type": "input.text", "text": word + " "}))
        ws.send(json.dumps({"type": "input.done"}))
        while not events or events[-1]["type"] not in ("session.done", "error"):
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                audio += message
            else:
                events.append(json.loads(message))
    assert events[-1]["type"] == "session.done" and events[-1]["total_sentences"] == 2
    alone = local.post("/tts", json={"text": text, "voice": "alloy", "sampling_seed": 3,
                                     "format": "pcm", "max_new_tokens": 40,
                                     "split": "sentence"})
    _assert_same_pcm(bytes(audio), alone.content)


# -- replicas -----------------------------------------------------------------------------

def test_http_ends_in_haproxy(cluster: RayAudioserve) -> None:
    """The cluster's default ingress: Ray Serve's HAProxy in front of the ingress replicas'
    own servers (no Python proxy on the way), its files under this cluster's directory."""
    binaries = set()
    for pid in processes_under(cluster.temp_dir):
        with suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            binaries.add(Path(argv[0].decode()).name)
    assert "haproxy" in binaries, binaries


def test_reading_limits_hold_behind_haproxy(cluster: RayAudioserve) -> None:
    """The service's reading limits through HAProxy: a body that stops gets the app's own
    408; headers that stop are closed by HAProxy's client timeout, the longest of the
    service's idle bounds (3 s here); headers within the cap are served (HAProxy's own
    buffer refused more than 16 KB) and headers over it are refused with a 4xx."""
    address = urlsplit(cluster.url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    body = multipart([("labels", "dog")], tone_wav(1.0))
    head = (f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: {MULTIPART}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=HANG_S) as sock:
        started = time.monotonic()
        sock.sendall(head + body[: len(body) // 2])  # and then silence
        status, _, answer = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408, answer
    assert "AUDIOSERVE_BODY_IDLE_TIMEOUT_S" in json.loads(answer)["error"]["message"]
    assert elapsed >= SETTINGS["body_idle_timeout_s"]  # not before the limit

    with socket.create_connection((host, port), timeout=HANG_S) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        status, _, _ = read_response(sock)
        elapsed = time.monotonic() - started
    assert status in (0, 408)  # closed, with or without HAProxy's own 408 page
    # by HAProxy's client timeout (3 s here, the longest idle bound), not early, and not
    # by this socket's own timeout (which also reads as status 0)
    assert 2.5 < elapsed < HANG_S - 1

    for size, served in ((40_000, True), (70_000, False)):  # the cap is 64 KiB
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                         + b"a" * size + b"\r\n\r\n")
            status, _, _ = read_response(sock)
        assert status == 200 if served else 400 <= status < 500, (size, status)
    assert httpx.get(f"{cluster.url}/healthz", timeout=10).status_code == 200


def test_the_connection_edge_holds_behind_haproxy(cluster: RayAudioserve) -> None:
    """Issue 21's connection classes through HAProxy, whose ingress replicas' uvicorn reads
    with this service's protocol too (service.edge.server.serve_auto_as_guarded): connections
    holding bodies nobody reads are closed; a trailer never reaches the app; the field cap
    is the ingress's (431 JSON; Ray's plain uvicorn has none); HEAD answers like GET; no
    redirect is built from Host."""
    address = urlsplit(cluster.url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    socks = [socket.create_connection((host, port), timeout=30) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000000000\r\n\r\nx")
            assert read_response(sock)[0] == 200
            sock.sendall(b"y")
        for sock in socks:  # closed (the socket's timeout would raise first)
            with suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
    finally:
        for sock in socks:
            sock.close()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n"
                     b"10\r\n{\"input\": \"dog\"}\r\n0\r\nX-Request-ID: from-trailer\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 200 and headers.get("x-request-id") != "from-trailer"
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    # 61 fields: within HAProxy's own 100 (its 400 page above), over the ingress's 50
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                     + b"".join(b"X-%d: v\r\n" % i for i in range(60)) + b"\r\n")
        status, _, body = read_response(sock)
    assert status == 431 and b"AUDIOSERVE_MAX_HEADER_FIELDS" in body
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /healthz/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, headers, _ = read_response(sock)
    assert status == 404 and "location" not in headers
    assert httpx.get(f"{cluster.url}/healthz", timeout=10).status_code == 200


def test_requests_reach_both_clap_replicas(http: httpx.Client) -> None:
    wav = wav_bytes(make_clip(2.0, seed=9))

    def embed(_: int) -> list[str]:
        r = http.post("/embed/audio", files={"file": ("a.wav", wav)})
        assert r.status_code == 200, r.text
        return _replicas(r)

    with ThreadPoolExecutor(8) as pool:
        seen = {name for names in pool.map(embed, range(40)) for name in names}
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    listed = models["clap"]["replicas"]
    assert seen == {r["id"] for r in listed}, (seen, listed)
    assert len(listed) == 2 and all(r["healthy"] for r in listed)
    assert len({r["node"] for r in listed}) == 2  # one per node
    assert [r["id"].split("#")[0] for r in models["chattts"]["replicas"]] == ["chattts"]


def test_readyz_and_per_replica_metrics(http: httpx.Client) -> None:
    assert http.get("/readyz").json()["status"] == "ready"
    text = http.get("/metrics").text
    replicas = {m["id"] for m in http.get("/v1/models").json()["data"][0]["replicas"]}
    for replica in replicas:
        assert f'queue="clap_audio",replica="{replica}"' in text
    assert 'replica="ingress#' in text


# -- faults and overload --------------------------------------------------------------------

def _json_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return dict(body["error"])


def test_backpressure_is_a_json_503_with_retry_after(http: httpx.Client) -> None:
    wav = speech_wav(speech_clip(3.0, seed=12))
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: http.post("/emotion",
                                                      files={"file": ("s.wav", wav)}),
                                  range(32)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "a burst of 32 against 1 ongoing + 1 queued must shed some"
    for r in refused:
        assert _json_error(r)["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    assert 200 in statuses


def test_disconnected_stream_frees_the_replica_slot(cluster: RayAudioserve,
                                                    http: httpx.Client) -> None:
    def engine() -> dict[str, Any]:
        models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        return dict(models["chattts"]["replicas"][0]["engine"])

    before = engine()
    body = {"text": SENTENCE * 30, "seed": 1, "stream": True, "format": "pcm"}
    with httpx.stream("POST", cluster.url + "/tts", json=body, timeout=60) as r:
        assert r.status_code == 200
        pieces = int(r.headers["x-audioserve-pieces"])
        audio = r.iter_raw()  # held: a discarded iterator closes the connection
        next(audio)
        busy = engine()
    # TTS_STREAM_PIECES_AHEAD pieces generate at a time (the rest start as those finish)
    assert pieces >= 8 and busy["running"] + busy["waiting"] >= 1, (pieces, busy)
    wait_until(lambda: engine()["running"] + engine()["waiting"] == 0,
               "the replica's engine is free after the client left", interval_s=0.05)
    now = engine()
    # the pieces under way were aborted (the rest never started)
    assert now["aborted"] - before["aborted"] >= 1, (before, now)


def test_killed_replica_during_burst(cluster: RayAudioserve, http: httpx.Client) -> None:
    import ray

    wav = wav_bytes(make_clip(3.0, seed=13))
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{cluster.app_name}#clap#"))
    results: list[tuple[int, float, bytes]] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        t0 = time.monotonic()
        r = http.post("/embed/audio", files={"file": ("a.wav", wav)},
                      timeout=DEADLINE_S + 10)
        with lock:
            results.append((r.status_code, time.monotonic() - t0, r.content))

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(50)]
        wait_until(lambda: len(results) >= 1, "the burst under way")  # then the kill
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]),
                 no_restart=True)
        for f in futures:
            f.result()
    statuses = [s for s, _, _ in results]
    assert len(results) == 50 and set(statuses) <= {200, 503, 504}, statuses
    # none hung: each was answered within its client's timeout (the deadline plus 10 s of
    # grace for a batch started before it; a timeout would have raised in f.result())
    for status, _, content in results:
        if status != 200:
            assert json.loads(content)["error"]["code"] in (
                "replica_unavailable", "overloaded", "timeout")
    # the controller replaces the replica: both healthy and serving again

    def replaced() -> bool:
        listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}["clap"]["replicas"]
        return len(listed) == 2 and all(r["healthy"] for r in listed) and victim["name"].split(
            "#")[-1] not in {r["id"].split("#")[-1] for r in listed}

    wait_until(replaced, "clap back to 2 healthy replicas", interval_s=0.5)
    assert http.get("/readyz").status_code == 200
    r = http.post("/embed/audio", files={"file": ("a.wav", wav)})
    assert r.status_code == 200, r.text
    assert np.isfinite(r.json()["data"][0]["embedding"]).all()
