"""Correctness under load (CI smoke version of bench/run): the real service as a separate
process on tiny packs, ~30 s of moderate concurrent traffic on every endpoint present.

Asserts only correctness, never timings: every response is a 2xx with the fields its
endpoint promises (no 5xx at this load), and an answer given under load equals the answer
the same body got alone (batched == unbatched, fp32). Loopback only; every loop is bounded
in count and time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from bench.bodies import Endpoint, build
from bench.server import ServerProcess, audioserve
from bench.wrk_load import run_wrk
from tests.conftest import HANG_S
from tests.tools import require_tool

pytest_plugins = ("tests.clap_fixtures", "tests.emotion2vec_fixtures", "tests.chattts_fixtures")

CONCURRENCY = 8
SECONDS_PER_ENDPOINT = 8.0
MAX_REQUESTS_PER_ENDPOINT = 400
WRK_SECONDS = 5.0
"""Long enough that a loaded 2-core machine completes some TTS requests at CONCURRENCY
(wrk counts only requests that finish within its run); where none finished, the run is
repeated twice as long, up to HANG_S, so a slower machine takes longer instead of failing."""
PROB_TOLERANCE = 1e-3

# endpoint -> (model, route module, fixture giving a models dir with that pack)
ENDPOINTS = {
    "classify": ("clap", "service.routes.clap", "clap_models_dir"),
    "emotion": ("emotion2vec", "service.routes.emotion", "emotion_models_dir"),
    "tts": ("chattts", "service.routes.tts", "chattts_models_dir"),
}


@dataclass(frozen=True)
class Service:
    server: ServerProcess
    endpoints: dict[str, Endpoint]
    skipped: dict[str, str]


def _pack_dir(request: pytest.FixtureRequest, endpoint: str) -> Path | str:
    """The tiny pack's folder, or why this endpoint cannot be load-tested here."""
    model, route, fixture = ENDPOINTS[endpoint]
    if importlib.util.find_spec(route) is None:
        return f"{route} not available yet"
    try:
        root: Path = request.getfixturevalue(fixture)
    except (ImportError, pytest.skip.Exception) as exc:
        return f"{model} tiny pack cannot be exported here: {exc}"
    return root / model


@pytest.fixture(scope="module")
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    models = tmp_path_factory.mktemp("load_models")
    skipped: dict[str, str] = {}
    present = []
    for endpoint, (model, _, _) in ENDPOINTS.items():
        pack = _pack_dir(request, endpoint)
        if isinstance(pack, str):
            skipped[endpoint] = pack
            continue
        (models / model).symlink_to(pack, target_is_directory=True)
        present.append(endpoint)
    if not present:
        pytest.skip(f"no endpoint can be load-tested: {skipped}")
    bodies = build(tmp_path_factory.mktemp("load_bodies"), present)
    settings = {"models": ",".join(ENDPOINTS[e][0] for e in present), "max_batch_size": "8",
                "max_wait_ms": "5", "intra_op_threads": "1"}
    server = audioserve("smoke", models, settings, log_dir=tmp_path_factory.mktemp("logs"),
                        python=sys.executable)
    server.start(ready_timeout_s=240)
    try:
        yield Service(server, bodies, skipped)
    finally:
        server.stop()


# -- what a valid answer is -----------------------------------------------------------------

def _probabilities(endpoint: str, body: dict[str, Any]) -> dict[str, float]:
    if endpoint == "classify":
        return {x["label"]: float(x["probability"]) for x in body["labels"]}
    return {x["label"]: float(x["score"]) for x in body["scores"]}


def check_json(endpoint: str, r: httpx.Response) -> dict[str, float]:
    body = r.json()
    assert body["demo"] is True
    probs = _probabilities(endpoint, body)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    if endpoint == "classify":
        assert set(probs) == {"speech", "dog barking", "music", "car horn", "rain"}
        assert body["windows_used"] >= 1
    else:
        assert len(probs) == 9
        assert body["emotion"]["label"] == max(probs, key=lambda k: probs[k])
    return probs


def check_audio(r: httpx.Response) -> None:
    assert r.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == 24000 and len(samples) > 0


def check(endpoint: str, r: httpx.Response, reference: dict[str, float] | None) -> None:
    assert r.status_code == 200, f"{endpoint}: {r.status_code} {r.text[:300]}"
    if endpoint == "tts":
        check_audio(r)
        return
    probs = check_json(endpoint, r)
    if reference is not None:  # batched under load == alone
        for label, p in reference.items():
            assert probs[label] == pytest.approx(p, abs=PROB_TOLERANCE), label


# -- load -------------------------------------------------------------------------------

async def _post(client: httpx.AsyncClient, ep: Endpoint, body: bytes) -> httpx.Response:
    return await client.post(ep.path, content=body, headers={"content-type": ep.content_type})


async def closed_loop(url: str, ep: Endpoint, references: list[dict[str, float] | None]
                      ) -> int:
    """CONCURRENCY workers posting the bodies in turn until the time or count runs out."""
    bodies = ep.read_bodies()
    deadline = time.monotonic() + SECONDS_PER_ENDPOINT
    sent = 0

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal sent
        i = offset
        while time.monotonic() < deadline and sent < MAX_REQUESTS_PER_ENDPOINT:
            sent += 1
            n = i % len(bodies)
            check(ep.name, await _post(client, ep, bodies[n]), references[n])
            i += 1

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        await asyncio.gather(*(worker(client, k) for k in range(CONCURRENCY)))
    return sent


async def references_alone(url: str, ep: Endpoint) -> list[dict[str, float] | None]:
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        out: list[dict[str, float] | None] = []
        for body in ep.read_bodies():
            r = await _post(client, ep, body)
            check(ep.name, r, None)
            out.append(None if ep.name == "tts" else _probabilities(ep.name, r.json()))
        return out


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_correct_under_concurrent_load(service: Service, endpoint: str) -> None:
    if endpoint in service.skipped:
        pytest.skip(service.skipped[endpoint])
    ep = service.endpoints[endpoint]
    url = service.server.url
    references = asyncio.run(references_alone(url, ep))
    sent = asyncio.run(closed_loop(url, ep, references))
    assert sent >= CONCURRENCY
    assert service.server.proc is not None and service.server.proc.poll() is None


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_wrk_sees_only_2xx(service: Service, endpoint: str) -> None:
    """The same bodies through wrk and bench/wrk/post_bodies.lua: its status counts."""
    require_tool("wrk", "apt-get install wrk")
    if endpoint in service.skipped:
        pytest.skip(service.skipped[endpoint])
    seconds = WRK_SECONDS
    result = run_wrk(service.server.url, service.endpoints[endpoint].folder, endpoint,
                     CONCURRENCY, seconds)
    while result.requests == 0 and seconds < HANG_S:  # a slow machine: run longer, not fail
        seconds *= 2
        result = run_wrk(service.server.url, service.endpoints[endpoint].folder, endpoint,
                         CONCURRENCY, seconds)
    assert result.requests > 0
    assert result.non_2xx() == {}, result.status
    assert result.socket_errors == 0


def test_bench_loads_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_wrk("http://10.0.0.1:80", Path(os.devnull), "classify", 1, 1)
