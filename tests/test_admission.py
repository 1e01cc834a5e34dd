"""Admission control: refuse early (503 + Retry-After) instead of piling up, and never
start work whose request deadline has passed."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batcher import DeadlineExceeded, Overloaded
from service.runtime import admission
from service.runtime.admission import AdmissionGate, CpuWorkers, deadline_scope, request_deadline
from tests.clap_fixtures import make_clip, wav_bytes
from tests.conftest import running_app

pytest_plugins = ("tests.clap_fixtures",)


def test_gate_refuses_beyond_max_in_flight_and_frees_slots() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("m", max_in_flight=2, timeout_s=5.0)
        async with gate.admit(), gate.admit():
            assert gate.in_flight == 2
            with pytest.raises(Overloaded) as refused:
                async with gate.admit():
                    pass
            assert refused.value.retry_after_s >= 1.0
        assert gate.in_flight == 0
        async with gate.admit():
            assert gate.in_flight == 1

    asyncio.run(scenario())


class FakeClock:
    """The gate's clock, advanced by the test: its rate arithmetic on exact durations,
    whatever the machine's speed or load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(admission, "time", fake)  # service.runtime.admission's `time` only
    return fake


def test_gate_refuses_when_the_predicted_wait_exceeds_the_deadline(clock: FakeClock) -> None:
    async def scenario() -> None:
        gate = AdmissionGate("m", max_in_flight=1000, timeout_s=2.0, wait_fraction=0.5)
        for _ in range(5):  # five requests, each 50 ms: 20 completions per second
            async with gate.admit():
                clock.advance(0.05)
        held = [gate.admit() for _ in range(40)]  # 40 in flight at 20/s: a 2 s wait > 1 s
        entered = 0
        with pytest.raises(Overloaded, match="predicted wait"):
            for cm in held:
                await cm.__aenter__()
                entered += 1
        assert entered in (20, 21)  # 20 in flight is a 1 s wait: the bound, give or take
        for cm in held[:entered]:
            await cm.__aexit__(None, None, None)
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_idle_time_does_not_make_the_service_look_slow(clock: FakeClock) -> None:
    """The rate counts busy time only: a pause between bursts must not cause refusals."""

    async def scenario() -> None:
        gate = AdmissionGate("m", max_in_flight=1000, timeout_s=2.0, wait_fraction=0.5)
        for _ in range(3):  # 20 completions per busy second
            async with gate.admit():
                clock.advance(0.05)
        clock.advance(1.5)  # idle: a wall-clock rate would fall to ~2 per second
        held = [gate.admit() for _ in range(8)]  # 8 at ~20/s: 0.4 s, under the 1 s bound
        for cm in held:
            await cm.__aenter__()
        for cm in held:
            await cm.__aexit__(None, None, None)
        assert gate.in_flight == 0

    asyncio.run(scenario())


def test_deadline_is_visible_inside_the_request_only() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("m", max_in_flight=4, timeout_s=3.0)
        assert request_deadline() is None
        before = time.monotonic()
        async with gate.admit() as deadline:
            assert before + 3.0 <= deadline <= time.monotonic() + 3.0  # set on admission
            inner = await asyncio.gather(asyncio.sleep(0, result=None), _read_deadline())
            assert inner[1] == deadline  # child tasks inherit it
        assert request_deadline() is None

    asyncio.run(scenario())


async def _read_deadline() -> float | None:
    return request_deadline()


def test_cpu_workers_never_start_work_past_the_deadline() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        cpu = CpuWorkers(threads=1)
        try:
            with deadline_scope(time.monotonic() + 3600):
                assert await cpu.run(calls.append, 1) is None  # in time: runs
            # a deadline that has just passed
            with deadline_scope(time.monotonic()), pytest.raises(DeadlineExceeded):
                await cpu.run(calls.append, 2)
            assert await cpu.run(calls.append, 3) is None  # no request deadline: runs
        finally:
            cpu.shutdown()

    asyncio.run(scenario())
    assert calls == [1, 3]


def test_classify_sheds_with_503_and_retry_after_not_500(clap_models_dir: Path) -> None:
    body = wav_bytes(make_clip(2.0, seed=7))
    with running_app(models_dir=clap_models_dir, max_in_flight=1, max_wait_ms=20) as client:

        def post(i: int) -> tuple[int, str | None]:
            r = client.post("/classify", files={"file": ("a.wav", body, "audio/wav")},
                            data={"labels": f"dog,rain,label{i}"})
            return r.status_code, r.headers.get("retry-after")

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(post, range(24)))
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        assert all(int(ra) >= 1 for s, ra in results if s == 503 and ra is not None)
        assert all(ra is not None for s, ra in results if s == 503)
        metrics = client.get("/metrics").text
        assert 'audioserve_rejections_total{queue="clap_admission",reason="in_flight_full"}' in (
            metrics
        )
        assert client.post("/classify", files={"file": ("a.wav", body, "audio/wav")},
                           data={"labels": "dog,rain"}).status_code == 200
